"""`slicer bench codec`: every codec method and setting on activations of trained models.

For each input tensor and setting: bits per element (payload bytes × 8 / elements, wire
header included), relative L2 error, cosine similarity, and encode and decode time as
ratios to ``torch.topk(|x|.flatten(), k, sorted=False)`` of the same tensor, measured
interleaved in the same run (medians of ``--reps`` runs; k = (1-s)·N for SLICER, s = 0.75
otherwise). Inputs: hidden states of ``../shared/fixtures/stories260k`` and of
``examples/models/slicer-tiny`` (when present) at a few layers, on text the model itself
samples (seeded); any ``--input T.pt`` (a tensor, or a dict of tensors, loaded with
``weights_only=True``); and a fixed 128×4096 float32 "speed" tensor (Gaussian with
outlier channels) for the CPU speed targets. It also reports, per input, the bits our
best mode needs to reach SLICER's relative L2 as a fraction of SLICER's bits
(interpolated on our rate-distortion curve, linear in log error).
"""
from __future__ import annotations

HELP = "codec methods on trained-model activations: bits/element, rel L2, cosine, time vs torch.topk"

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("SLICER_SHARED", REPO.parent / "shared"))
STORIES260K = SHARED / "fixtures" / "stories260k"
SLICER_TINY = REPO / "examples" / "models" / "slicer-tiny"
ECSQ_RATES = (0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0)
#: ECSQ's speed targets on the 128×4096 speed input at rate 8 (1 byte an element, int8's
#: rate), as multiples of torch.topk of the same tensor (issue 18).
ECSQ_SPEED_SPEC = "ecsq:rate=8"


@dataclass
class Row:
    """One (input, setting) measurement."""

    method: str
    """Codec method name."""
    config: str
    """``CodecConfig.spec()`` of the setting."""
    input: str
    """Input name (model:layer, file[:key], or speed-128x4096)."""
    shape: list[int]
    """Tensor shape."""
    bits_per_element: float
    """Payload bytes × 8 / elements, all metadata and the wire header included."""
    rel_l2: float
    """‖x̂ - x‖ / ‖x‖."""
    cosine: float
    """Cosine similarity of x̂ and x (flattened)."""
    encode_over_topk: float
    """Median encode time / median topk time, same tensor, same run."""
    decode_over_topk: float
    """Median decode time / median topk time."""
    encode_ms: float
    """Median encode time (ms)."""
    decode_ms: float
    """Median decode time (ms)."""
    topk_ms: float
    """Median ``torch.topk(|x|.flatten(), k, sorted=False)`` time (ms)."""
    payload_bytes: int
    """len(payload)."""
    predict_bytes: int
    """``slicer.codec.predict_bytes`` for the shape (an upper bound of payload_bytes)."""
    ours: bool = False
    """A mode beyond the papers (ecsq, or SLICER with entropy coding)."""
    error: str = ""
    """Non-empty when the setting failed (the message)."""
    extra: dict = field(default_factory=dict)


def settings(quick: bool) -> list[str]:
    """Config specs, in table order."""
    out = []
    for s in (0.5, 0.75, 0.9):
        out += [
            f"slicer:sparsity={s}",  # paper defaults: q_bit 8 with ABQ δ = 0.01, index auto
            f"slicer:sparsity={s},delta=none",  # ABQ off, every block 8 bits
            f"slicer:sparsity={s},bits=8/4/2,delta=none",  # fixed list Q
            f"slicer:sparsity={s},index=csr",  # the paper's index
        ]
        if not quick or s == 0.75:
            out.append(f"slicer:sparsity={s},entropy=true")  # ours on SLICER's structure
    out += ["opsc", "opsc:bits=4,delta=none", "opsc:bits=8,delta=0.001,threshold=3.0"]
    rates = (0.5, 1.0, 2.0, 3.0, 4.0, 8.0) if quick else ECSQ_RATES
    out += [f"ecsq:rate={r}" for r in rates]
    out += [f"ecsq:rate={r},rotate=true" for r in ((1.0, 2.0) if quick else (1.0, 2.0, 3.0))]
    out += ["ecsq:sparsity=0.75"]
    out += ["fp16", "bf16", "fp16-zstd", "int8", "q8_0", "fp8"]
    return out


def _method_available(name: str) -> bool:
    from slicer.codec import methods

    target = methods.REGISTRY[name][1].partition(":")[0]
    return importlib.util.find_spec(target) is not None


# ---------------------------------------------------------------- inputs


def _sampled_ids(model, batch: int, seq: int, seed: int):
    import torch

    bos = getattr(model.config, "bos_token_id", None)
    bos = 1 if bos is None else int(bos)
    torch.manual_seed(seed)
    ids = torch.full((batch, 1), bos, dtype=torch.long)
    with torch.no_grad():
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=0.8, top_k=0, max_new_tokens=seq - 1, min_new_tokens=seq - 1,
            pad_token_id=bos,
        )
    return out[:, :seq]


def _heldout_ids(path: Path, batch: int, seq: int):
    """(batch, seq) token ids of the model folder's held-out text (``heldout.txt`` with its
    own tokenizer), consecutive windows from the start; None when the folder has neither."""
    text_file = path / "heldout.txt"
    if not text_file.exists():
        return None
    try:
        import torch
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(path))
        ids = tok(text_file.read_text(encoding="utf-8"))["input_ids"]
    except Exception:  # no usable tokenizer: fall back to sampled text
        return None
    if len(ids) < batch * seq:
        return None
    return torch.tensor(ids[: batch * seq], dtype=torch.long).reshape(batch, seq)


def model_features(path: Path, layers: list[int], batch: int, seq: int, tag: str) -> dict:
    """Hidden states (batch, seq, hidden) after the given decoder layers, on the folder's
    held-out text when it ships one (``heldout.txt`` + tokenizer), else on text the model
    samples itself (seeded, temperature 0.8), so the activations are in distribution."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path)).eval()
    ids = _heldout_ids(path, batch, seq)
    if ids is None:
        ids = _sampled_ids(model, batch, seq, seed=0)
    with torch.no_grad():
        hs = model(ids, output_hidden_states=True).hidden_states
    n = len(hs) - 1
    out = {}
    for layer in layers:
        if 1 <= layer <= n:
            out[f"{tag}:layer{layer}"] = hs[layer].detach().float().contiguous()
    return out


def speed_input():
    """128×4096 float32: Gaussian with 8 outlier channels (×20), fixed seed."""
    import torch

    g = torch.Generator().manual_seed(4096)
    x = torch.randn(128, 4096, generator=g)
    x[:, torch.randperm(4096, generator=g)[:8]] *= 20
    return x


def file_inputs(paths: list[str]) -> dict:
    import torch

    out = {}
    for p in paths:
        obj = torch.load(p, weights_only=True, map_location="cpu")
        items = obj.items() if isinstance(obj, dict) else [(None, obj)]
        for key, t in items:
            if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel():
                out[f"{Path(p).name}" + (f":{key}" if key is not None else "")] = t.detach()
    if paths and not out:
        raise SystemExit(f"slicer bench codec: no floating-point tensor in {paths}")
    return out


# ---------------------------------------------------------------- measurement


def _median_ms(ts: list[float]) -> float:
    ts = sorted(ts)
    return ts[len(ts) // 2] * 1e3


def measure(x, spec: str, input_name: str, reps: int) -> Row:
    import torch

    from slicer import codec
    from slicer.codec import CodecConfig, CodecError

    cfg = CodecConfig.parse(spec)
    s = cfg.sparsity if cfg.method == "slicer" else 0.75
    k = max(1, int(math.floor((1 - s) * x.numel())))
    flat_abs_src = x
    try:
        payload = codec.encode(x, cfg)
        y = codec.decode(payload)
    except CodecError as e:
        return Row(cfg.method, cfg.spec(), input_name, list(x.shape), math.nan, math.nan, math.nan, math.nan,
                   math.nan, math.nan, math.nan, math.nan, 0, 0, error=str(e))
    t_topk, t_enc, t_dec = [], [], []
    c_topk, c_enc, c_dec = [], [], []  # CPU time of this process: steadier on a shared machine
    # Small tensors take ~0.1 ms per call, where a scheduler hiccup is a large fraction:
    # more runs for them (up to 16x, as many elements timed as 128x4096 at `reps`).
    reps = min(16 * reps, max(reps, reps * (1 << 19) // max(1, x.numel())))
    for _ in range(reps):  # interleaved so load drift hits all three alike
        c0, t0 = time.process_time(), time.perf_counter()
        torch.topk(flat_abs_src.abs().flatten(), k, sorted=False)
        c1, t1 = time.process_time(), time.perf_counter()
        codec.encode(x, cfg)
        c2, t2 = time.process_time(), time.perf_counter()
        codec.decode(payload)
        c3, t3 = time.process_time(), time.perf_counter()
        t_topk.append(t1 - t0)
        t_enc.append(t2 - t1)
        t_dec.append(t3 - t2)
        c_topk.append(c1 - c0)
        c_enc.append(c2 - c1)
        c_dec.append(c3 - c2)
    xd, yd = x.double().flatten(), y.double().flatten()
    rel = float((yd - xd).norm() / xd.norm()) if float(xd.norm()) > 0 else 0.0
    cos = float(torch.nn.functional.cosine_similarity(xd, yd, dim=0)) if float(yd.norm()) > 0 else 0.0
    topk_ms, enc_ms, dec_ms = _median_ms(t_topk), _median_ms(t_enc), _median_ms(t_dec)
    ours = cfg.method == "ecsq" or (cfg.method == "slicer" and cfg.entropy)
    return Row(
        method=cfg.method, config=cfg.spec(), input=input_name, shape=list(x.shape),
        bits_per_element=len(payload) * 8 / x.numel(), rel_l2=rel, cosine=cos,
        encode_over_topk=enc_ms / topk_ms, decode_over_topk=dec_ms / topk_ms,
        encode_ms=enc_ms, decode_ms=dec_ms, topk_ms=topk_ms, payload_bytes=len(payload),
        predict_bytes=codec.predict_bytes(tuple(x.shape), cfg, x.dtype), ours=ours,
        # Best-case ratios: on a loaded machine the minimum is the steadier statistic.
        extra={"reps": reps, "encode_over_topk_min": min(t_enc) / min(t_topk),
               "decode_over_topk_min": min(t_dec) / min(t_topk),
               # medians of process CPU time (single-threaded work is what it measures)
               "encode_over_topk_cpu": _median_ms(c_enc) / max(_median_ms(c_topk), 1e-9),
               "decode_over_topk_cpu": _median_ms(c_dec) / max(_median_ms(c_topk), 1e-9)},
    )


def bits_to_reach(points: list[tuple[float, float]], target_err: float) -> float | None:
    """Bits at which a rate-distortion curve (bits, rel_l2) reaches ``target_err``:
    linear interpolation of bits in log(error) between the two bracketing points; None
    when the target is outside the curve."""
    pts = sorted((b, e) for b, e in points if e > 0 and math.isfinite(e))
    for (b0, e0), (b1, e1) in zip(pts, pts[1:]):
        if e0 >= target_err >= e1 and e0 > e1:
            t = (math.log(e0) - math.log(target_err)) / (math.log(e0) - math.log(e1))
            return b0 + t * (b1 - b0)
    for b, e in pts:
        if e == target_err:
            return b
    return None


def ours_vs_slicer(rows: list[Row]) -> list[dict]:
    """Per input and SLICER setting: our bits at SLICER's rel L2 as a fraction of SLICER's.
    "Ours" is the better of the ecsq curves (plain and rotated) at that error."""
    out = []
    inputs = sorted({r.input for r in rows})
    for inp in inputs:
        rs = [r for r in rows if r.input == inp and not r.error]
        curves = {
            "ecsq": [(r.bits_per_element, r.rel_l2) for r in rs if r.method == "ecsq" and "rate=" in r.config and "rotate" not in r.config],
            "ecsq+rotate": [(r.bits_per_element, r.rel_l2) for r in rs if r.method == "ecsq" and "rotate=True" in r.config],
        }
        for r in rs:
            if r.method != "slicer" or r.ours:
                continue
            best = None
            for name, pts in curves.items():
                b = bits_to_reach(pts, r.rel_l2)
                if b is not None and (best is None or b < best[1]):
                    best = (name, b)
            out.append({
                "input": inp, "slicer_config": r.config, "slicer_bits": r.bits_per_element, "slicer_rel_l2": r.rel_l2,
                "ours": best[0] if best else None, "ours_bits": best[1] if best else None,
                "fraction": (best[1] / r.bits_per_element) if best else None,
            })
    return out


# ---------------------------------------------------------------- CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", action="append", default=[], metavar="T.pt",
                   help="a tensor (or dict of tensors) saved with torch.save; repeatable")
    p.add_argument("--json", metavar="OUT", help="write rows and summaries as JSON")
    p.add_argument("--methods", nargs="+", metavar="M", help="only these methods (e.g. slicer ecsq int8)")
    p.add_argument("--quick", action="store_true", help="fewer settings, reps and tokens (a minute)")
    p.add_argument("--reps", type=int, default=None, help="timed runs per setting (default 15, quick 5)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--layers", type=int, nargs="+", default=[2, 4], help="decoder layers to tap (default 2 4)")
    p.add_argument("--no-model", action="store_true", help="skip the model activations")
    p.add_argument("--no-speed", action="store_true", help="skip the 128x4096 speed input")
    p.add_argument("--backend", choices=("torch", "triton"), default="torch",
                   help="triton: GB/s of the GPU encoder and decoder against a device-to-device copy (needs CUDA)")
    p.add_argument("--tokens", type=int, nargs="+", default=[1, 4, 16, 64, 256, 1024, 4096, 8192],
                   help="rows of 4096 for --backend triton (default 1..8192)")


def kernel_throughput(tokens: list[int], dtypes=("float16", "bfloat16", "float32"), sparsity: float = 0.75,
                      reps: int = 20, width: int = 4096, device: str = "cuda") -> list[dict]:
    """Encode/decode GB/s of the SLICER Triton path on ``device`` for (tokens, width)
    tensors, against a device-to-device copy of the same tensor (the ceiling), medians of
    ``reps`` synchronized runs. GB/s counts the input tensor's bytes once."""
    import statistics

    import torch

    from slicer import codec

    def timed(fn) -> float:
        fn()
        out = []
        for _ in range(reps):
            torch.cuda.synchronize() if device == "cuda" else None
            t0 = time.perf_counter()
            fn()
            torch.cuda.synchronize() if device == "cuda" else None
            out.append(time.perf_counter() - t0)
        return statistics.median(out)

    rows = []
    for dt in dtypes:
        for t in tokens:
            x = torch.randn(t, width, device=device).to(getattr(torch, dt))
            cfg = codec.CodecConfig(method="slicer", sparsity=sparsity, backend="triton")
            payload = codec.encode(x, cfg)
            gb = x.numel() * x.element_size() / 1e9
            t_copy = timed(lambda: x.clone())
            t_enc = timed(lambda: codec.encode(x, cfg))
            t_dec = timed(lambda: codec.decode(payload, device=device, backend="triton"))
            rows.append({"dtype": dt, "tokens": t, "width": width, "sparsity": sparsity,
                         "copy_GBps": gb / t_copy, "encode_GBps": gb / t_enc, "decode_GBps": gb / t_dec,
                         "encode_over_copy": t_copy / t_enc, "decode_over_copy": t_copy / t_dec, "encode_ms": t_enc * 1e3, "decode_ms": t_dec * 1e3,
                         "bits_per_element": len(payload) * 8 / x.numel()})
    return rows


def _fmt(v: float, nd: int = 3) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{nd}f}"


def print_table(rows: list[Row], out=sys.stdout) -> None:
    head = f"{'input':<22} {'config':<44} {'bits/el':>8} {'rel L2':>8} {'cosine':>8} {'enc/topk':>9} {'dec/topk':>9}"
    print(head, file=out)
    print("-" * len(head), file=out)
    for r in rows:
        cfg = r.config + (" *" if r.ours else "")
        if r.error:
            print(f"{r.input:<22} {cfg:<44} error: {r.error[:60]}", file=out)
            continue
        print(f"{r.input:<22} {cfg:<44} {r.bits_per_element:>8.3f} {r.rel_l2:>8.4f} {r.cosine:>8.5f} "
              f"{r.encode_over_topk:>9.2f} {r.decode_over_topk:>9.2f}", file=out)
    print("(* = ours: beyond the papers)", file=out)


def run(args: argparse.Namespace) -> int:
    import torch

    if args.backend == "triton":
        interp = os.environ.get("TRITON_INTERPRET") == "1"
        if not torch.cuda.is_available() and not interp:
            print("slicer bench codec --backend triton needs a CUDA GPU (or TRITON_INTERPRET=1 for a slow "
                  "CPU smoke run with small --tokens); none here")
            return 2
        rows = kernel_throughput(args.tokens, reps=args.reps or 20, device="cuda" if torch.cuda.is_available() else "cpu",
                                 width=4096 if torch.cuda.is_available() else 64)
        print(f"{'dtype':<9} {'tokens':>6} {'copy GB/s':>10} {'enc GB/s':>9} {'dec GB/s':>9} {'enc/copy':>8} "
              f"{'dec/copy':>8} {'enc ms':>8} {'dec ms':>8}")
        for r in rows:
            print(f"{r['dtype']:<9} {r['tokens']:>6} {r['copy_GBps']:>10.1f} {r['encode_GBps']:>9.2f} "
                  f"{r['decode_GBps']:>9.2f} {r['encode_over_copy']:>8.3f} {r['decode_over_copy']:>8.3f} "
                  f"{r['encode_ms']:>8.3f} {r['decode_ms']:>8.3f}")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"benchmark": "codec-triton", "device": torch.cuda.get_device_name() if torch.cuda.is_available()
                           else "cpu (TRITON_INTERPRET)", "rows": rows}, f, indent=1)
        return 0

    if args.threads:
        torch.set_num_threads(args.threads)
    reps = args.reps or (5 if args.quick else 15)
    specs = settings(args.quick)
    from slicer.codec import CodecConfig

    skipped = sorted({CodecConfig.parse(s).method for s in specs if not _method_available(CodecConfig.parse(s).method)})
    specs = [s for s in specs if _method_available(CodecConfig.parse(s).method)]
    if args.methods:
        specs = [s for s in specs if CodecConfig.parse(s).method in args.methods]
    if skipped:
        print(f"slicer bench codec: methods not available yet, skipped: {', '.join(skipped)}", file=sys.stderr)

    inputs: dict = {}
    if not args.no_model:
        batch, seq = (2, 64) if args.quick else (4, 128)
        if (STORIES260K / "config.json").exists():
            inputs.update(model_features(STORIES260K, args.layers, batch, seq, "stories260k"))
        else:
            print(f"slicer bench codec: {STORIES260K} absent, skipping its activations", file=sys.stderr)
        if (SLICER_TINY / "config.json").exists():
            try:
                inputs.update(model_features(SLICER_TINY, args.layers, batch, seq, "slicer-tiny"))
            except Exception as e:  # a half-written model folder must not stop the bench
                print(f"slicer bench codec: could not load {SLICER_TINY}: {e}", file=sys.stderr)
    inputs.update(file_inputs(args.input))
    if not args.no_speed:
        inputs["speed-128x4096"] = speed_input()
    if not inputs:
        print("slicer bench codec: no input (give --input T.pt)", file=sys.stderr)
        return 2

    rows: list[Row] = []
    t_start = time.perf_counter()
    for name, x in inputs.items():
        for spec in specs:
            rows.append(measure(x, spec, name, reps))
    print_table(rows)
    cmp_rows = ours_vs_slicer(rows)
    if cmp_rows:
        print("\nAt SLICER's relative L2, our bits as a fraction of SLICER's (lower is better):")
        print(f"{'input':<22} {'slicer config':<40} {'slicer bits':>11} {'rel L2':>8} {'ours':>12} {'ours bits':>9} {'fraction':>8}")
        for c in cmp_rows:
            print(f"{c['input']:<22} {c['slicer_config']:<40} {c['slicer_bits']:>11.3f} {c['slicer_rel_l2']:>8.4f} "
                  f"{str(c['ours']):>12} {_fmt(c['ours_bits']):>9} {_fmt(c['fraction']):>8}")
    s075 = CodecConfig(method="slicer", sparsity=0.75).spec()  # the paper's defaults at s = 0.75
    speed = [r for r in rows if r.input == "speed-128x4096" and r.config == s075 and not r.error]
    summary = {
        "threads": torch.get_num_threads(), "reps": reps, "seconds": time.perf_counter() - t_start,
        "skipped_methods": skipped,
    }
    if speed:
        summary["speed_slicer_s075"] = {"encode_over_topk": speed[0].encode_over_topk,
                                        "decode_over_topk": speed[0].decode_over_topk,
                                        "topk_ms": speed[0].topk_ms}
        summary["speed_slicer_s075"].update({k: speed[0].extra[k] for k in ("encode_over_topk_min", "decode_over_topk_min")})
        print(f"\nCPU speed, 128x4096 float32, slicer s=0.75: encode {speed[0].encode_over_topk:.2f}x topk "
              f"(target <= 3), decode {speed[0].decode_over_topk:.2f}x topk (target <= 1); topk {speed[0].topk_ms:.2f} ms, "
              f"{torch.get_num_threads()} threads (medians; best-case ratios {speed[0].extra['encode_over_topk_min']:.2f}x, "
              f"{speed[0].extra['decode_over_topk_min']:.2f}x)")
    ecsq8 = CodecConfig.parse(ECSQ_SPEED_SPEC)
    espeed = [r for r in rows if r.input == "speed-128x4096" and r.method == "ecsq" and not r.error
              and CodecConfig.parse(r.config) == ecsq8]
    if espeed:
        e = espeed[0]
        summary["speed_ecsq_rate8"] = {"encode_over_topk": e.encode_over_topk, "decode_over_topk": e.decode_over_topk,
                                       "topk_ms": e.topk_ms, "bits_per_element": e.bits_per_element,
                                       **{k: e.extra[k] for k in ("encode_over_topk_min", "decode_over_topk_min",
                                                                  "encode_over_topk_cpu", "decode_over_topk_cpu")}}
        print(f"CPU speed, 128x4096 float32, {ECSQ_SPEED_SPEC}: encode {e.encode_over_topk:.2f}x topk (target <= 1.5), "
              f"decode {e.decode_over_topk:.2f}x topk (target <= 1.0); CPU-time ratios {e.extra['encode_over_topk_cpu']:.2f}x, "
              f"{e.extra['decode_over_topk_cpu']:.2f}x; best-case {e.extra['encode_over_topk_min']:.2f}x, "
              f"{e.extra['decode_over_topk_min']:.2f}x ({e.bits_per_element:.3f} bits/element)")
    at075 = [c for c in cmp_rows if c["slicer_config"] == s075 and not c["input"].startswith("speed")]
    if at075:
        summary["ours_fraction_at_slicer_s075"] = {c["input"]: c["fraction"] for c in at075}
        print("Ours at SLICER s=0.75's rel L2 (target <= 0.50 of its bits): "
              + ", ".join(f"{c['input']} {_fmt(c['fraction'], 2)}" for c in at075))
    if args.json:
        Path(args.json).write_text(json.dumps({
            "rows": [asdict(r) for r in rows], "ours_vs_slicer": cmp_rows, "summary": summary,
        }, indent=1))
        print(f"wrote {args.json}")
    return 0
