"""Fidelity of split inference against the unsplit model (what ``slicer bench fidelity``
measures), with the codec in the loop exactly as the edge and server exchange bytes.

- next-token agreement: teacher forcing on held-out sequences; the split run is driven
  through ``EdgeSession``/``ServerSession`` (a prefill payload for the prompt, then one
  payload per token, or offload's local steps and hand-off), and its argmax at every
  scored position is compared with the unsplit model's;
- KL(p_unsplit || p_split) in nats, averaged over the same positions;
- perplexity ratio: exp(mean NLL of the split run - mean NLL of the unsplit one) on the
  sequences' actual next tokens;
- greedy agreement: both generate ``N`` tokens greedily from each prompt; the fraction of
  positions where the tokens are equal (``greedy_prefix``: the matching prefix's share);
- bits per element: all payload bytes (headers included) x 8 / feature elements sent.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from slicer.actors.models.generate import (
    EdgeSession,
    ServerSession,
    generate,
    reference_generate,
)
from slicer.codec import CodecConfig


@dataclass
class FidelityResult:
    """One configuration's fidelity figures."""

    model: str
    split: int
    """Split unit ℓ (the edge runs ``[0, ℓ)``)."""
    mode: str
    codec: str
    """The codec spec as given (``lossless``, ``slicer:sparsity=0.75,bits=8``...)."""
    offload_step: int | None
    front_bits: int | None
    """Edge weight precision (None: the model's dtype; 8 / 4: weight-only int8 / int4)."""
    next_token_agreement: float
    kl: float
    """Mean KL(p_unsplit || p_split), nats per position."""
    ppl_ratio: float
    greedy_agreement: float
    greedy_prefix: float
    bits_per_element: float
    """Payload bits per feature element, headers included (0 when nothing was sent)."""
    positions: int
    """Teacher-forced positions scored."""
    greedy_tokens: int
    """Tokens generated per prompt for the greedy figures."""
    payload_bytes: int
    """All payload bytes of the teacher-forced runs."""
    data: str = ""
    """Where the sequences came from."""

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def teacher_forced_logits(model, seq: torch.Tensor, prompt_len: int, split: int, mode: str, offload_step,
                          codec_cfg: CodecConfig, edge_model=None):
    """Logits ``(T - P, V)`` of the split run predicting tokens ``P..T-1`` of ``seq (1, T)``,
    plus (payload bytes, feature elements) lists."""
    edge_model = edge_model or model
    n = model.num_units
    edge = EdgeSession(edge_model, split, codec_cfg, mode=mode, offload_step=offload_step)
    server = ServerSession(model, edge.split) if edge.split < n else None
    out, nbytes, nelem = [], [], []

    def take(step):
        if step.payload is None:
            out.append(step.logits)
        else:
            nbytes.append(len(step.payload))
            nelem.append(step.elements)
            out.append(server.step_logits(step.payload)[0, -1])

    T = seq.shape[1]
    take(edge.begin(seq[:, :prompt_len]))
    for t in range(prompt_len, T - 1):
        take(edge.next(int(seq[0, t])))
    return torch.stack(out), nbytes, nelem  # (T - P, V)


def _kl_nll(ref_logits, logits, targets):
    lp_ref = F.log_softmax(ref_logits.float(), -1)  # (N, V)
    lp = F.log_softmax(logits.float(), -1)
    kl = (lp_ref.exp() * (lp_ref - lp)).sum(-1).clamp(min=0.0)  # (N,); rounding can give -1e-10
    nll_ref = -lp_ref.gather(-1, targets[:, None])[:, 0]
    nll = -lp.gather(-1, targets[:, None])[:, 0]
    return kl, nll_ref, nll


@torch.no_grad()
def measure(model, sequences: torch.Tensor, *, split: int, codec_spec: str = "lossless", mode: str = "split",
            offload_step: int | None = None, prompt_len: int = 16, greedy_tokens: int = 32, front_bits: int | None = None,
            edge_model=None, data: str = "") -> FidelityResult:
    """Fidelity of one configuration over ``sequences (N, T)`` of token ids."""
    cfg = CodecConfig.parse(codec_spec)
    if front_bits is not None and edge_model is None:
        from slicer.actors.models.quant import quantize_front

        edge_model = quantize_front(model, model.num_units if mode in ("local-then-offload", "edge-only") else split, front_bits)
    N, T = sequences.shape
    if not 1 <= prompt_len < T:
        raise ValueError(f"prompt_len={prompt_len} is invalid: need 1 <= prompt_len < sequence length {T}")
    n = model.num_units
    agree = kls = nll_r = nll_s = 0.0
    count = 0
    nbytes = nelem = 0
    feat_bytes = 0
    g_match = g_prefix = 0.0
    for i in range(N):
        seq = sequences[i : i + 1]
        ref = model.run(0, n, seq)[0, prompt_len - 1 : T - 1]  # (T - P, V)
        got, b, e = teacher_forced_logits(model, seq, prompt_len, split, mode, offload_step, cfg, edge_model)
        targets = seq[0, prompt_len:]
        kl, nr, ns = _kl_nll(ref, got, targets)
        agree += float((ref.argmax(-1) == got.argmax(-1)).sum())
        kls += float(kl.sum())
        nll_r += float(nr.sum())
        nll_s += float(ns.sum())
        count += ref.shape[0]
        nbytes += sum(b)
        nelem += sum(e)
        feat_bytes += sum(x for x, y in zip(b, e) if y)
        if greedy_tokens:
            prompt = seq[:, :prompt_len]
            r_tok, _ = reference_generate(model, prompt, greedy_tokens)
            s_tok = generate(model, prompt, greedy_tokens, mode, split, offload_step, cfg, edge_model=edge_model).tokens
            eq = [a == b for a, b in zip(r_tok, s_tok)]
            g_match += sum(eq) / greedy_tokens
            g_prefix += (eq.index(False) if False in eq else greedy_tokens) / greedy_tokens
    return FidelityResult(
        model=model.name, split=split, mode=mode, codec=codec_spec, offload_step=offload_step, front_bits=front_bits,
        next_token_agreement=agree / count, kl=kls / count, ppl_ratio=math.exp((nll_s - nll_r) / count),
        greedy_agreement=g_match / N if greedy_tokens else float("nan"),
        greedy_prefix=g_prefix / N if greedy_tokens else float("nan"),
        bits_per_element=feat_bytes * 8 / nelem if nelem else 0.0,
        positions=count, greedy_tokens=greedy_tokens, payload_bytes=nbytes, data=data,
    )


@torch.no_grad()
def sample_sequences(model, n: int, length: int, *, seed: int = 0, bos: int | None = None, temperature: float = 1.0) -> torch.Tensor:
    """``(n, length)`` token ids sampled from the model itself (a stand-in for held-out
    text when a model ships none), seeded, starting from BOS."""
    if bos is None:
        bos = getattr(model.config, "bos_token_id", None)
        bos = 0 if bos is None else int(bos if not isinstance(bos, list) else bos[0])
    g = torch.Generator().manual_seed(seed)
    ids = torch.full((n, 1), bos, dtype=torch.long)
    cache = model.new_cache(0, model.num_units)
    logits = model.run(0, model.num_units, ids, cache)[:, -1]
    for _ in range(length - 1):
        p = torch.softmax(logits.float() / temperature, -1)
        nxt = torch.multinomial(p, 1, generator=g)  # (n, 1)
        ids = torch.cat([ids, nxt], 1)
        logits = model.run(0, model.num_units, nxt, cache)[:, -1]
    return ids


def heldout_sequences(folder: str | Path, n: int, length: int) -> torch.Tensor | None:
    """``(n, length)`` ids from a model folder's ``heldout.txt`` (tokenized with the
    folder's tokenizer, cut into consecutive windows), or None when it has none."""
    folder = Path(folder)
    txt = folder / "heldout.txt"
    if not folder.is_dir() or not txt.exists():
        return None
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    ids = tok(txt.read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"]
    windows = len(ids) // length
    if windows == 0:
        return None
    ids = torch.tensor(ids[: windows * length]).reshape(windows, length)
    return ids[:n]
