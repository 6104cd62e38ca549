"""`slicer bench fidelity`: split inference against the unsplit model, codec in the loop."""
from __future__ import annotations

HELP = "fidelity of split inference (next-token agreement, KL, perplexity ratio, greedy agreement, bits/element)"

from slicer.policies.schema import Mode

MODES = tuple(m.value for m in Mode)


def _ints(values) -> list[int]:
    out = []
    for v in values:
        for part in str(v).split(","):
            if part.strip():
                out.append(int(part))
    return out


def add_arguments(p) -> None:
    p.add_argument("--model", required=True, metavar="NAME_OR_PATH",
                   help="model folder or hub name, or a shipped config name (random weights)")
    p.add_argument("--split", action="append", required=True, metavar="L",
                   help="split unit ℓ (edge runs [0, ℓ)); repeat or comma-separate for a table")
    p.add_argument("--codec", action="append", metavar="SPEC",
                   help="codec spec: lossless, int8, slicer:sparsity=0.75,bits=8, ... (repeatable; default lossless)")
    p.add_argument("--mode", action="append", choices=MODES, help="AR mode (repeatable; default split)")
    p.add_argument("--offload-step", type=int, default=4, metavar="W", help="w of the offload mode (default 4)")
    p.add_argument("--front-bits", type=int, choices=(8, 4), help="edge weights int8/int4 (weight-only)")
    p.add_argument("--tokens", type=int, default=32, metavar="N", help="greedy tokens per prompt (default 32)")
    p.add_argument("--sequences", type=int, default=8, help="held-out sequences (default 8)")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per sequence (default 128)")
    p.add_argument("--prompt-len", type=int, default=16, help="prefill tokens before scoring (default 16)")
    p.add_argument("--seed", type=int, default=0, help="seed of sampled sequences (default 0)")
    p.add_argument("--data", default="auto", metavar="auto|sample|FILE.txt",
                   help="auto: the model folder's heldout.txt if any, else sequences sampled from the model")
    p.add_argument("--min-agreement", type=float, default=0.95,
                   help="summary: fewest bits/element per split keeping agreement >= this (default 0.95)")
    p.add_argument("--dtype", default="float32", help="model dtype (default float32)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--json", metavar="OUT", help="write the rows as JSON (an object for one row, a list for several)")


def _check_codecs(specs) -> str | None:
    from slicer.codec import CodecConfig, CodecError
    from slicer.codec import methods as _methods

    for s in specs:
        try:
            cfg = CodecConfig.parse(s)
            _methods.get(cfg.method)
        except (CodecError, ValueError, KeyError) as e:
            return f"codec {s!r} is not usable here: {e}"
    return None


def _load_sequences(model, args):
    from pathlib import Path

    import torch

    from slicer.actors.models.fidelity import heldout_sequences, sample_sequences

    if args.data not in ("auto", "sample"):
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(args.model)
        ids = tok(Path(args.data).read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"]
        k = len(ids) // args.seq_len
        if k == 0:
            raise ValueError(f"{args.data} holds {len(ids)} tokens, fewer than --seq-len {args.seq_len}")
        return torch.tensor(ids[: k * args.seq_len]).reshape(k, args.seq_len)[: args.sequences], f"text {args.data}"
    if args.data == "auto":
        seqs = heldout_sequences(args.model, args.sequences, args.seq_len)
        if seqs is not None:
            return seqs, f"{args.model}/heldout.txt ({seqs.shape[0]} x {args.seq_len} tokens)"
    seqs = sample_sequences(model, args.sequences, args.seq_len, seed=args.seed)
    return seqs, f"sampled from the model (seed {args.seed}, T=1, {args.sequences} x {args.seq_len} tokens)"


def format_table(rows) -> str:
    head = f"{'split':>5} {'mode':<10} {'w':>2} {'front':>5} {'codec':<36} {'agree':>6} {'KL':>8} {'ppl_x':>7} {'greedy':>6} {'bits/el':>7}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.split:>5} {r.mode:<10} {r.offload_step if r.mode == 'local-then-offload' else '':>2} {r.front_bits or '':>5} "
            f"{r.codec:<36} {r.next_token_agreement:>6.3f} {r.kl:>8.4f} {r.ppl_ratio:>7.3f} "
            f"{r.greedy_agreement:>6.3f} {r.bits_per_element:>7.2f}"
        )
    return "\n".join(lines)


def best_per_split(rows, min_agreement: float) -> dict:
    """split -> the row with the fewest bits per element among those keeping agreement."""
    best = {}
    for r in rows:
        if r.next_token_agreement >= min_agreement and r.bits_per_element > 0:
            key = (r.split, r.mode)
            if key not in best or r.bits_per_element < best[key].bits_per_element:
                best[key] = r
    return best


def run(args) -> int:
    import json
    import sys

    import torch

    specs = args.codec or ["lossless"]
    err = _check_codecs(specs)
    if err:
        print(f"slicer bench fidelity: {err}", file=sys.stderr)
        return 2
    torch.set_num_threads(max(1, args.threads))
    from slicer.actors.models import load_model
    from slicer.actors.models.fidelity import measure
    from slicer.actors.models.profiling import dtype_of

    model = load_model(args.model, dtype=dtype_of(args.dtype))
    if model.kind != "causal_lm":
        print(f"slicer bench fidelity: {args.model} is a {model.kind} model; this bench measures causal LMs",
              file=sys.stderr)
        return 2
    splits = _ints(args.split)
    for s in splits:
        if not 1 <= s <= model.num_units - 1:
            print(f"slicer bench fidelity: --split {s} is invalid: allowed 1..{model.num_units - 1} "
                  f"({model.num_units} units: embed, {model.num_units - 2} blocks, head)", file=sys.stderr)
            return 2
    seqs, data = _load_sequences(model, args)
    rows = []
    for mode in args.mode or ["split"]:
        for s in splits:
            for spec in specs:
                r = measure(model, seqs, split=s, codec_spec=spec, mode=mode,
                            offload_step=args.offload_step if mode == "local-then-offload" else None,
                            prompt_len=args.prompt_len, greedy_tokens=args.tokens, front_bits=args.front_bits,
                            data=data)
                rows.append(r)
                print(format_table([r]).splitlines()[-1], flush=True)
    print(f"\nmodel {model.name}; data: {data}")
    print(format_table(rows))
    best = best_per_split(rows, args.min_agreement)
    if best:
        print(f"\nfewest bits/element keeping next-token agreement >= {args.min_agreement}:")
        for (s, mode), r in sorted(best.items()):
            print(f"  split {s} ({mode}): {r.bits_per_element:.2f} bits/el with {r.codec} (agreement {r.next_token_agreement:.3f})")
    if args.json:
        out = [r.to_dict() for r in rows]
        with open(args.json, "w") as f:
            json.dump(out[0] if len(out) == 1 else out, f, indent=1)
    return 0
