"""Shared pieces of the reproductions (``examples/repro_*.py``): the models that run here,
their held-out token ids, a prefill fidelity measurement with the codec in the loop, and
table writers that label every figure measured, predicted or emulated.

Fidelity here (``prefill_fidelity``) is the single-shot form of SLICER's Table 5: per
held-out sequence the edge runs units ``[0, ℓ)`` on all ``T`` tokens at once, the whole
``(1, T, H)`` feature is encoded into one payload (one top-k over ``T·H`` elements, as
ATKF on a flattened IF), the server decodes it and runs ``[ℓ, n)``; the split model's
argmax at every position is compared with the unsplit model's (teacher-forced next-token
agreement) and ``KL(p_unsplit || p_split)`` is averaged over the same positions. It is
exact for the lossless codec (agreement 1, KL 0), which the reproductions check.
"""
from __future__ import annotations

import csv
import math
import os
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python examples/repro_x.py` from a checkout
    sys.path.insert(0, str(REPO))

RESULTS = REPO / "examples" / "results"
SLICER_TINY = REPO / "examples" / "models" / "slicer-tiny"
STORIES260K = Path(os.environ.get("SLICER_STORIES260K", REPO.parent / "shared" / "fixtures" / "stories260k"))

#: What each label means in every table these scripts write.
LABELS = {
    "measured": "run on this machine (CPU), real trained weights, real payload bytes",
    "predicted": "computed by the policies' cost model / Eq. 1 link model from profiles and catalog figures; nothing run",
    "emulated": "run here, but a property of the target (device speed, link) is imposed, not real",
}


def local_models(names: Iterable[str] | None = None) -> list[tuple[str, Path]]:
    """(short name, folder) of the trained models present here; missing ones are reported
    on stderr and skipped (slicer-tiny is built by ``examples/train_tiny_llama.py``)."""
    known = {"slicer-tiny": SLICER_TINY, "stories260k": STORIES260K}
    out = []
    for name in names or known:
        path = known.get(name, Path(name))
        if (path / "config.json").exists():
            out.append((name if name in known else path.name, path))
        else:
            print(f"[skip] model {name}: no config.json at {path}"
                  + (" (train it: python examples/train_tiny_llama.py)" if name == "slicer-tiny" else ""),
                  file=sys.stderr)
    return out


def heldout_ids(model, folder: Path, n: int, length: int, seed: int = 0):
    """``(n, length)`` token ids: the folder's heldout.txt when it has one (and a
    tokenizer), else sequences sampled from the model itself (stories260k ships none)."""
    from slicer.actors.models.fidelity import heldout_sequences, sample_sequences

    seqs = heldout_sequences(folder, n, length)
    if seqs is not None and seqs.shape[0] >= n:
        return seqs, f"{folder.name}/heldout.txt, {n} x {length} tokens"
    return sample_sequences(model, n, length, seed=seed), f"sampled from the model (seed {seed}), {n} x {length} tokens"


@dataclass
class Prepared:
    """Unsplit logits and layer-ℓ features of the held-out sequences, computed once."""

    model: object
    split: int
    ref_logp: list
    """Per sequence, (T, V) log-probabilities of the unsplit model."""
    features: list
    """Per sequence, the (1, T, H) feature x_ℓ the edge would send."""
    edge_model: object | None = None


def prepare(model, seqs, split: int, edge_model=None) -> Prepared:
    import torch
    import torch.nn.functional as F

    n = model.num_units
    if not 1 <= split <= n - 1:
        raise ValueError(f"split {split} is invalid for {model.name}: allowed 1..{n - 1}")
    edge = edge_model or model
    ref, feats = [], []
    with torch.no_grad():
        for i in range(seqs.shape[0]):
            s = seqs[i : i + 1]
            ref.append(F.log_softmax(model.run(0, n, s)[0].float(), -1))  # (T, V)
            feats.append(edge.run(0, split, s))  # (1, T, H)
    return Prepared(model, split, ref, feats, edge_model)


@dataclass
class Fidelity:
    """Measured figures of one codec setting at one split over all sequences."""

    agreement: float
    """Teacher-forced next-token agreement with the unsplit model (argmax equal)."""
    kl: float
    """Mean KL(p_unsplit || p_split), nats per position."""
    bits_per_element: float
    """Payload bytes x 8 / feature elements, headers included (mean over sequences)."""
    payload_bytes: float
    """Mean payload bytes of one sequence's feature."""
    elements: int
    """Elements of one feature (T x H)."""
    encode_ms: float
    """Median encode time of one payload on this CPU (one thread)."""
    widths: list = field(default_factory=list)
    """SLICER only: per sequence, the (Mtot,) block widths the encoder chose."""
    sizes: list = field(default_factory=list)
    """SLICER only: per sequence, the (Mtot,) block sizes."""


def prefill_fidelity(prep: Prepared, cfg) -> Fidelity:
    """Encode every prepared feature with ``cfg``, finish on the server half, compare."""
    import statistics

    import torch
    import torch.nn.functional as F

    from slicer.codec import decode, encode

    m, n = prep.model, prep.model.num_units
    agree = kl = 0.0
    count = 0
    nbytes, times, widths, sizes = [], [], [], []
    with torch.no_grad():
        for ref, h in zip(prep.ref_logp, prep.features):
            t0 = time.perf_counter()
            payload = encode(h, cfg)
            times.append(time.perf_counter() - t0)
            nbytes.append(len(payload))
            if cfg.method == "slicer":
                from slicer.codec.slicer import inspect

                p = inspect(payload)
                widths.append(p.widths.tolist())
                sizes.append(p.sizes.tolist())
            lp = F.log_softmax(m.run(prep.split, n, decode(payload))[0].float(), -1)  # (T, V)
            agree += float((lp.argmax(-1) == ref.argmax(-1)).sum())
            kl += float((ref.exp() * (ref - lp)).sum(-1).clamp(min=0).sum())
            count += ref.shape[0]
    elems = prep.features[0].numel()
    mean_bytes = sum(nbytes) / len(nbytes)
    return Fidelity(agreement=agree / count, kl=kl / count, bits_per_element=mean_bytes * 8 / elems,
                    payload_bytes=mean_bytes, elements=elems, encode_ms=statistics.median(times) * 1e3,
                    widths=widths, sizes=sizes)


def write_csv(rows: Sequence[dict], path: Path, columns: Sequence[str] | None = None, digits: int | None = None) -> None:
    """Rows as CSV. Floats in their shortest round-trip form (a reader recomputes exactly
    what was written), or to ``digits`` significant digits; ``columns`` selects fields."""
    path.parent.mkdir(parents=True, exist_ok=True)
    names: list[str] = list(columns or [])
    if not columns:
        for r in rows:
            names += [k for k in r if k not in names]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=names, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: _fmt(v, digits) for k, v in r.items()})


def _fmt(v, digits: int | None = None):
    if isinstance(v, float):
        if math.isinf(v) or math.isnan(v):
            return str(v)
        return repr(v) if digits is None else f"{v:.{digits}g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(str(_fmt(x, digits)) for x in v) + "]"
    return v


def md_table(rows: Sequence[dict], columns: Sequence[str], headers: Sequence[str] | None = None) -> str:
    """A Markdown table of ``columns`` of ``rows`` (floats to 4 significant digits)."""
    def cell(v):
        if isinstance(v, float):
            return "inf" if math.isinf(v) else f"{v:.4g}"
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(cell(x) for x in v) + "]"
        return "" if v is None else str(v)

    head = list(headers or columns)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join(cell(r.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def provenance(measured: str, predicted: str, emulated: str) -> str:
    """The block every result file starts with: what is measured, predicted, emulated."""
    return "\n".join([
        f"- **Measured** ({LABELS['measured']}): {measured}",
        f"- **Predicted** ({LABELS['predicted']}): {predicted}",
        f"- **Emulated** ({LABELS['emulated']}): {emulated}",
    ])


def environment() -> str:
    import platform

    import torch

    return (f"python {platform.python_version()}, torch {torch.__version__}, {os.cpu_count()} CPUs, "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
