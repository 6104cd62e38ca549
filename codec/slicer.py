"""SLICER (seed 001 §3): ATKF → sign separation + MS → per-block AIQ (fixed Q or ABQ) →
index coding, as the torch/numpy reference that is the spec, the CPU path and what the
Triton kernels must reproduce byte for byte.

Every step is defined in ``codec/reference/``: ``atkf.py`` (exact k, λ, seeded ties),
``ms.py`` (signs, equal-cardinality blocks), ``quant.py`` (AIQ, ABQ, value stream),
``index.py`` (csr / bitmap / rice / ef, labels, auto). ``codec/ratemodel.py`` holds B^UB.

Payload: four sections (``max_sections`` = 4), all integers little-endian.

0. params: ``u8 flags`` (bits 0-1 index coding id, bit 2 entropy, bits 3-7 zero);
   ``k`` and ``n+`` (kept entries, of which positive) as unsigned ints of ``nb`` bytes, nb =
   bytes needed for N (3 for 128×4096); ``u8 M+``, ``u8 M-``; the width of every block minus
   one as 4-bit codes (``pack_bits``, ``ceil(Mtot/2)`` bytes; an empty block carries the
   configured width); ``lo, hi`` float32 per block (0, 0 for an empty block). Block sizes
   are not stored: they follow from ``k``, ``n+`` and ``M`` (``ms.all_block_sizes``).
1. index: the positions in the chosen coding (``index.py``).
2. labels: block label per kept position (empty for csr).
3. values: the codes, block after block, each block in ascending position, at its width,
   in one LSB-first bit stream (``quant.pack_blocks``). With ``entropy``: per non-empty
   block a varint byte length and a ``slicer.codec.reference.entropy`` stream of its codes
   (alphabet ``2^q``), or that module's plain packed mode when rANS would not be smaller.

GPU notes (for a kernel that must write the same bytes): the per-block ``inv`` and ``o``
are correctly rounded float32 divisions (Triton's ``/`` on fp32 is not: use
``div_rn`` or compute the ≤ 128 values on the host); ``rint`` is round-half-even
(libdevice ``rint``, not ``floor(x + 0.5)``); ``(v - lo)·inv`` is a subtract then a
multiply (nothing to contract) but ``lo + c·o`` must not become an FMA; ``k`` and the
Rice candidates are host integers; every per-block sum is an integer sum.

Decoding is exact arithmetic on the stored integers and float32 ranges, and is idempotent
for float32/float64 tensors (a float16/bfloat16 result is the float32 value rounded to that
type, which moves it off the quantization grid):
``y = decode(encode(x))`` gives ``decode(encode(y)) == y`` bit for bit when the widths are
fixed (``delta=None`` or a list Q) and no kept magnitude is subnormal with λ > 0 (a
subnormal times w < 1 can round to a zero score). The payload bytes of ``encode(y)`` equal
those of ``encode(x)`` when, in addition, ``x`` has at least k nonzero scores and no two
kept magnitudes of one sign are equal across a block cut: otherwise the tied entries
(equal values, so equal decoded values) may swap blocks or kept slots, which changes
labels and positions but no decoded value. With ABQ a re-encode may pick other widths
(``y`` lies on a coarser grid), so only the error bound holds.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from slicer.codec import ratemodel
from slicer.codec.config import CodecConfig
from slicer.codec.errors import CodecError
from slicer.codec.reference import index as _index
from slicer.codec.reference import quant
from slicer.codec.reference.atkf import atkf_positions, keep_count
from slicer.codec.reference.bitpack import pack_bits, unpack_bits
from slicer.codec.reference.ms import all_block_sizes, split_blocks
from slicer.codec.wire import Cursor, Frame, varint

NSECTIONS = 4


@dataclass(frozen=True)
class Params:
    """The params section: everything in a SLICER payload but the positions and codes."""

    k: int
    """Kept entries."""
    n_pos: int
    """Kept entries in the positive blocks (kept zeros included)."""
    blocks: tuple[int, int]
    """(M+, M-)."""
    sizes: np.ndarray
    """(Mtot,) entries per block, global label order."""
    widths: np.ndarray
    """(Mtot,) bits per code of each block."""
    lo: np.ndarray
    """(Mtot,) float32 block minimum magnitude."""
    hi: np.ndarray
    """(Mtot,) float32 block maximum magnitude."""
    coding_id: int
    """Index coding id (``index.CODING_IDS``)."""
    entropy: bool
    """Values entropy-coded."""

    @property
    def index(self) -> str:
        """Index coding used: csr, bitmap, rice or ef."""
        return _index.CODING_NAMES[self.coding_id]


@dataclass(frozen=True)
class Parsed(Params):
    """The whole content of a SLICER payload (what ``SLICER.parse`` reads; used by tests
    and to compare a GPU encoder with the reference field by field)."""

    positions: np.ndarray
    """(k,) flat positions, block-major, ascending within a block."""
    codes: np.ndarray
    """(k,) integer codes in the order of ``positions``."""


def inspect(payload: bytes) -> Parsed:
    """Parse a SLICER payload (wire header included) into its fields."""
    from slicer.codec import wire

    frame = wire.unpack(payload)
    return SLICER.parse(frame)


def _entropy_module():
    try:
        from slicer.codec.reference import entropy
    except ImportError as e:  # pragma: no cover
        raise CodecError("entropy coding not available for slicer yet") from e
    return entropy


def _entropy_block(codes: np.ndarray, bits: int) -> bytes:
    """Entropy stream of one block, never longer than the entropy module's packed mode
    (``u8 1, varint lo, u8 width, codes - lo packed``), which keeps ``predict_bytes`` a bound
    even where the rANS estimate was a few bytes optimistic."""
    ent = _entropy_module()
    stream = ent.encode_symbols(codes, 1 << bits)
    lo, hi = int(codes.min()), int(codes.max())
    if lo == hi:
        return stream
    width = (hi - lo).bit_length()
    packed = bytes((1,)) + varint(lo) + bytes((width,)) + pack_bits(codes - lo, width)
    return stream if len(stream) <= len(packed) else packed


def _as_flat_f32(x: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.detach().float().reshape(-1).cpu().numpy())


class _Slicer:
    """The SLICER method object (wire id 1)."""

    def encode(self, x: torch.Tensor, cfg: CodecConfig) -> list[bytes]:
        if cfg.rotate:
            raise CodecError("CodecConfig.rotate=True is not supported by method 'slicer' (use 'ecsq')")
        shape = tuple(int(d) for d in x.shape)
        xf = _as_flat_f32(x)  # (N,) float32
        numel = xf.shape[0]
        if not np.isfinite(xf).all():  # the selection and the ranges need finite values
            raise CodecError("tensor holds NaN or Inf (or float64 values beyond float32); method 'slicer' needs finite values")
        blocks = cfg.blocks
        mtot = blocks[0] + blocks[1]
        if cfg.fixed_bits:
            widths = quant.fixed_widths(cfg.bits, blocks)  # raises on a bad Q before any work
        k = keep_count(numel, cfg.sparsity)
        pos = atkf_positions(xf, k, cfg.asymmetry, cfg.seed)  # (k,) ascending
        labels, mags, n_pos = split_blocks(xf[pos], pos, blocks, cfg.seed)  # (k,), (k,)
        sizes = all_block_sizes(k, n_pos, blocks)  # (Mtot,)
        order = _index.block_order(labels)  # (k,) block-major, ascending position within a block
        m_sorted = mags[order]  # (k,) float32
        lo, hi = quant.block_ranges(m_sorted, sizes)
        q0 = widths if cfg.fixed_bits else np.full(mtot, int(cfg.bits), dtype=np.int64)
        codes = self._codes(m_sorted, sizes, lo, hi, q0)  # (k,) block-major
        if not cfg.fixed_bits:
            widths = quant.choose_widths(m_sorted, sizes, lo, hi, int(cfg.bits), float(cfg.delta), codes)
            if np.any(widths != q0):
                codes = self._codes(m_sorted, sizes, lo, hi, widths)
        coding = _index.choose(cfg.index, shape, pos, mtot)
        cid, idx_sec, lab_sec = _index.encode(coding, pos, labels, shape, mtot)
        if cfg.entropy:
            parts = []
            starts = np.cumsum(sizes) - sizes
            for b in range(mtot):
                if sizes[b]:
                    s = _entropy_block(codes[starts[b] : starts[b] + sizes[b]], int(widths[b]))
                    parts += [varint(len(s)), s]
            values = b"".join(parts)
        else:
            values = quant.pack_blocks(codes, sizes, widths)
        nb = ratemodel.count_nbytes(numel)
        params = b"".join([
            bytes((cid | (4 if cfg.entropy else 0),)),
            k.to_bytes(nb, "little"), n_pos.to_bytes(nb, "little"),
            bytes(blocks),
            pack_bits(widths - 1, 4),
            np.stack([lo, hi], axis=1).astype("<f4").tobytes(),
        ])
        return [params, idx_sec, lab_sec, values]

    @staticmethod
    def _codes(m_sorted: np.ndarray, sizes: np.ndarray, lo: np.ndarray, hi: np.ndarray, widths: np.ndarray) -> np.ndarray:
        """Block-major codes, quantized block by block with scalar parameters."""
        inv = quant.inv_step(lo, hi, widths)
        codes = np.empty(m_sorted.shape[0], dtype=np.int64)
        start = 0
        for b, n in enumerate(sizes.tolist()):  # ≤ 128 blocks
            if n:
                codes[start : start + n] = quant.quantize(m_sorted[start : start + n], lo[b], inv[b], (1 << int(widths[b])) - 1)
            start += n
        return codes

    def decode(self, frame: Frame) -> torch.Tensor:
        p = self.parse(frame)
        o = quant.step(p.lo, p.hi, p.widths)
        out = np.zeros(frame.numel, dtype=np.float32)  # (N,)
        start = 0
        for b, n in enumerate(p.sizes.tolist()):  # ≤ 128 blocks; scalar parameters per block
            if n:
                v = quant.dequantize(p.codes[start : start + n], p.lo[b], p.hi[b], o[b], (1 << int(p.widths[b])) - 1)
                out[p.positions[start : start + n]] = v if b < p.blocks[0] else -v
            start += n
        return torch.from_numpy(out).reshape(frame.shape)

    def parse(self, frame: Frame) -> Parsed:
        """Every field of a SLICER payload, validated (``CodecError`` on any defect)."""
        h = self.parse_params(frame)
        _, idx_sec, lab_sec, val_sec = frame.sections
        positions = _index.decode(h.coding_id, idx_sec, lab_sec, frame.shape, h.sizes)  # (k,) block-major
        if h.entropy:
            codes = self._entropy_codes(val_sec, h.sizes, h.widths)
        else:
            codes = quant.unpack_blocks(val_sec, h.sizes, h.widths)  # (k,) block-major
        return Parsed(**vars(h), positions=positions, codes=codes)

    def parse_params(self, frame: Frame) -> Params:
        """The params section (section 0) of a SLICER payload, validated: a few dozen bytes,
        read on the host by every decoder (the reference and the Triton one)."""
        if len(frame.sections) != NSECTIONS:
            raise CodecError(f"slicer payload has {len(frame.sections)} sections, expected {NSECTIONS}")
        params = frame.sections[0]
        numel = frame.numel
        nb = ratemodel.count_nbytes(numel)
        if len(params) < 1 + 2 * nb + 2:
            raise CodecError(f"slicer params section of {len(params)} bytes is truncated")
        flags = params[0]
        if flags >> 3:
            raise CodecError(f"slicer flags byte {flags:#x} has unknown bits set")
        coding_id, entropy = flags & 3, bool(flags & 4)
        k = int.from_bytes(params[1 : 1 + nb], "little")
        n_pos = int.from_bytes(params[1 + nb : 1 + 2 * nb], "little")
        if k > numel:
            raise CodecError(f"slicer payload keeps k={k} of only {numel} elements")
        if n_pos > k:
            raise CodecError(f"slicer payload has {n_pos} positive entries but k={k}")
        blocks = (params[1 + 2 * nb], params[2 + 2 * nb])
        if not all(1 <= m <= 64 for m in blocks):
            raise CodecError(f"slicer block counts {blocks} outside 1..64")
        mtot = blocks[0] + blocks[1]
        if len(params) != ratemodel.params_nbytes(numel, mtot):
            raise CodecError(
                f"slicer params section holds {len(params)} bytes, {mtot} blocks need {ratemodel.params_nbytes(numel, mtot)}"
            )
        off = 3 + 2 * nb
        nw = (mtot + 1) // 2
        widths = unpack_bits(params[off : off + nw], mtot, 4, "slicer width field") + 1  # (Mtot,) 1..16
        rng = np.frombuffer(params[off + nw :], dtype="<f4").astype(np.float32).reshape(mtot, 2)
        lo, hi = rng[:, 0].copy(), rng[:, 1].copy()
        sizes = all_block_sizes(k, n_pos, blocks)
        if not (np.all(np.isfinite(rng)) and np.all(lo >= 0) and np.all(hi >= lo)):
            raise CodecError("slicer block ranges must be finite with 0 <= lo <= hi")
        if np.any(rng[sizes == 0] != 0):
            raise CodecError("slicer: an empty block carries a nonzero range")
        return Params(k, n_pos, blocks, sizes, widths, lo, hi, coding_id, entropy)

    @staticmethod
    def _entropy_codes(buf, sizes: np.ndarray, widths: np.ndarray) -> list[np.ndarray]:
        ent = _entropy_module()
        out = [np.zeros(0, dtype=np.int64)]
        cur = Cursor(buf, context="slicer value section")
        for n, w in zip(sizes.tolist(), widths.tolist()):
            if n == 0:
                continue
            length = cur.varint("entropy block length", len(buf))
            block = cur.take(length, "entropy block")
            out.append(np.asarray(ent.decode_symbols(block, n, 1 << w), dtype=np.int64))
        if cur.pos != len(buf):
            raise CodecError(f"slicer value section has {len(buf) - cur.pos} trailing bytes")
        return np.concatenate(out)

    def predict_bytes(self, shape, dtype, cfg: CodecConfig) -> int:
        """Sections bytes bound (B^UB without the wire header): exact with fixed one-width
        bits, no entropy and a csr/bitmap/ef index; an upper bound otherwise."""
        if cfg.fixed_bits:
            quant.fixed_widths(cfg.bits, cfg.blocks)
        return ratemodel.slicer_sections(tuple(int(d) for d in shape), cfg)["total"]

    def section_bounds(self, shape, dtype, cfg: CodecConfig) -> list[int]:
        """Bound of each of the four section lengths (exact where ``predict_bytes`` is):
        with them ``wire.header_nbytes`` gives the header exactly too."""
        if cfg.fixed_bits:
            quant.fixed_widths(cfg.bits, cfg.blocks)
        m = ratemodel.slicer_sections(tuple(int(d) for d in shape), cfg)
        return [m["params"], m["index"], m["labels"], m["values"]]

    def max_sections(self, cfg: CodecConfig) -> int:
        return NSECTIONS


SLICER = _Slicer()


def _bench(shape=(128, 4096), sparsity: float = 0.75, reps: int = 31, threads: int | None = None, **cfg_kw) -> dict:
    """Encode/decode time against ``torch.topk(|x|.flatten(), k, sorted=False)`` of the same
    tensor, medians of ``reps`` interleaved runs. Returns the ratios and the times (ms)."""
    from slicer import codec

    if threads:
        torch.set_num_threads(threads)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    cfg = CodecConfig(method="slicer", sparsity=sparsity, **cfg_kw)
    k = keep_count(x.numel(), sparsity)
    payload = codec.encode(x, cfg)
    from slicer.codec import wire

    fns = {
        "topk": lambda: torch.topk(x.abs().flatten(), k, sorted=False),
        "encode": lambda: codec.encode(x, cfg),
        # the method alone plus the wire container: codec.encode also runs a torch.isfinite
        # check over the input, whose cost depends on torch's thread pool
        "encode_method": lambda: wire.pack(1, x.dtype, tuple(x.shape), SLICER.encode(x, cfg)),
        "decode": lambda: codec.decode(payload),
    }
    times = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {name: float(np.median(t)) * 1e3 for name, t in times.items()}
    return {
        "shape": list(shape), "sparsity": sparsity, "threads": torch.get_num_threads(),
        "topk_ms": med["topk"], "encode_ms": med["encode"], "decode_ms": med["decode"],
        "encode_method_ms": med["encode_method"],
        "encode_over_topk": med["encode"] / med["topk"], "decode_over_topk": med["decode"] / med["topk"],
        "encode_method_over_topk": med["encode_method"] / med["topk"],
        "bits_per_element": len(payload) * 8 / x.numel(),
    }


if __name__ == "__main__":  # python -m codec.slicer
    import json

    for t in (1, 2):
        print(json.dumps(_bench(threads=t)))
