"""Weight-only int8 / int4 quantization of the edge's front segment (OPSC's mixed
precision, seed 002; SLICER's compressed front network, seed 001 Eq. 4).

A small implementation rather than torchao: torchao 0.18 (tried with torch 2.13 CPU)
does int8 weight-only but its int4 weight-only path needs the ``mslk`` GPU package on
CPU, and importing it took 8 s here. These modules also work on the meta device, so the
profile of a quantized 70B front is computed without any weights.

- int8: symmetric, one scale per output channel (row): ``w ≈ q · s``, ``q ∈ [-127, 127]``.
- int4: symmetric, one scale per group of ``group_size`` inputs of a row, ``q ∈ [-8, 7]``
  stored two per byte; rows are zero-padded to a whole number of groups.
- Scales are float16 (2 bytes each), as in GPTQ/AWQ checkpoints.

Weights are dequantized on the fly in ``forward`` (memory is what is saved, not time).
``quant_nbytes`` / ``quant_num_params`` let ``slicer.actors.models.profiling`` count the real
bytes of a quantized unit.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

SCALE_DTYPE = torch.float16
BITS = (8, 4)


def _quantize_rows(w: torch.Tensor, bits: int, group_size: int):
    """``w (rows, cols)`` -> (codes, scales (rows, groups), cols padded). int8 codes are
    ``(rows, cols)`` int8; int4 codes are ``(rows, cols_padded / 2)`` uint8."""
    rows, cols = w.shape
    if w.is_meta:  # profiles of big configs: shapes only
        if bits == 8:
            return (torch.empty(rows, cols, dtype=torch.int8, device="meta"),
                    torch.empty(rows, 1, dtype=SCALE_DTYPE, device="meta"), cols)
        groups = -(-cols // group_size)
        return (torch.empty(rows, groups * group_size // 2, dtype=torch.uint8, device="meta"),
                torch.empty(rows, groups, dtype=SCALE_DTYPE, device="meta"), cols)
    w = w.float()
    if bits == 8:
        amax = w.abs().amax(dim=1, keepdim=True)  # (rows, 1)
        s = (amax / 127.0).clamp(min=1e-12).to(SCALE_DTYPE)
        q = torch.round(w / s.float()).clamp(-127, 127).to(torch.int8)
        return q, s, cols
    g = group_size
    pad = (-cols) % g
    if pad:
        w = F.pad(w, (0, pad))
    wg = w.reshape(rows, -1, g)  # (rows, groups, g)
    amax = wg.abs().amax(dim=2)  # (rows, groups)
    s = (amax / 7.0).clamp(min=1e-12).to(SCALE_DTYPE)
    q = torch.round(wg / s.float()[..., None]).clamp(-8, 7).to(torch.int16) + 8  # 0..15
    q = q.reshape(rows, -1).to(torch.uint8)  # (rows, cols_padded)
    packed = q[:, 0::2] | (q[:, 1::2] << 4)  # (rows, cols_padded / 2)
    return packed, s, cols


def _dequantize_rows(codes, scales, bits: int, cols: int, group_size: int, dtype) -> torch.Tensor:
    if bits == 8:
        return (codes.float() * scales.float()).to(dtype)  # (rows, cols)
    lo = (codes & 0x0F).to(torch.int16) - 8
    hi = (codes >> 4).to(torch.int16) - 8
    q = torch.stack([lo, hi], dim=-1).reshape(codes.shape[0], -1)  # (rows, cols_padded)
    w = q.reshape(q.shape[0], -1, group_size).float() * scales.float()[..., None]
    return w.reshape(q.shape[0], -1)[:, :cols].to(dtype)


class QuantLinear(nn.Module):
    """A Linear (or GPT-2 ``Conv1D``) with int8 / int4 weight-only storage."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, bits: int, group_size: int = 32):
        super().__init__()
        if bits not in BITS:
            raise ValueError(f"bits={bits!r} is invalid: allowed {BITS}")
        if bits == 4 and (group_size < 2 or group_size % 2):
            raise ValueError(f"group_size={group_size!r} is invalid: need an even int >= 2")
        self.out_features, self.in_features = int(weight.shape[0]), int(weight.shape[1])
        self.bits, self.group_size, self.dtype = bits, group_size, weight.dtype
        codes, scales, _ = _quantize_rows(weight.detach(), bits, group_size)
        self.register_buffer("codes", codes)
        self.register_buffer("scales", scales)
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False) if bias is not None else None

    @property
    def quant_nbytes(self) -> int:
        return self.codes.numel() * self.codes.element_size() + self.scales.numel() * self.scales.element_size()

    @property
    def quant_num_params(self) -> int:
        return self.in_features * self.out_features

    def dequantized_weight(self) -> torch.Tensor:
        return _dequantize_rows(self.codes, self.scales, self.bits, self.in_features, self.group_size, self.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantized_weight().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, bits={self.bits}, group_size={self.group_size}"


class QuantEmbedding(nn.Module):
    """An embedding table with one int8 / int4 quantized row per token; only the looked-up
    rows are dequantized."""

    def __init__(self, weight: torch.Tensor, bits: int, group_size: int = 32, padding_idx=None):
        super().__init__()
        self.num_embeddings, self.embedding_dim = int(weight.shape[0]), int(weight.shape[1])
        self.in_features, self.out_features = self.embedding_dim, self.num_embeddings  # for profiles
        self.bits, self.group_size, self.dtype = bits, group_size, weight.dtype
        self.padding_idx = padding_idx
        codes, scales, _ = _quantize_rows(weight.detach(), bits, group_size)
        self.register_buffer("codes", codes)
        self.register_buffer("scales", scales)

    quant_nbytes = QuantLinear.quant_nbytes

    @property
    def quant_num_params(self) -> int:
        return self.num_embeddings * self.embedding_dim

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        codes = self.codes[ids.reshape(-1)]  # (N, cols or cols/2)
        scales = self.scales[ids.reshape(-1)]
        w = _dequantize_rows(codes, scales, self.bits, self.embedding_dim, self.group_size, self.dtype)
        return w.reshape(*ids.shape, self.embedding_dim)


def _replace_children(module: nn.Module, bits: int, group_size: int) -> int:
    """Swap every Linear / Conv1D / Embedding under ``module`` for its quantized form."""
    n = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear):
            setattr(module, name, QuantLinear(child.weight, child.bias, bits, group_size))
            n += 1
        elif type(child).__name__ == "Conv1D":  # GPT-2: weight (in, out), y = x @ W + b
            setattr(module, name, QuantLinear(child.weight.t(), child.bias, bits, group_size))
            n += 1
        elif isinstance(child, nn.Embedding):
            setattr(module, name, QuantEmbedding(child.weight, bits, group_size, child.padding_idx))
            n += 1
        else:
            n += _replace_children(child, bits, group_size)
    return n


def quantize_front(model, ell: int, bits: int = 8, *, group_size: int = 32, inplace: bool = False):
    """The model with the weights of units ``[0, ell)`` quantized to ``bits`` (8 or 4),
    weight-only; norms and biases stay at the model's dtype. Returns a new
    ``SplitModel`` (a deep copy unless ``inplace``) whose ``profile`` counts the
    quantized bytes and records ``extra["front_bits"]``/``extra["front_units"]``.

    Convolutions (ResNet) and units at or past ``ell`` are left as they are. A
    weight tied between the embedding and the LM head stays full precision in the head."""
    from slicer.actors.models.split import SplitModel

    if bits not in BITS:
        raise ValueError(f"bits={bits!r} is invalid: allowed {BITS}")
    if not 1 <= ell <= model.num_units:
        raise ValueError(f"ell={ell} is invalid: need 1 <= ell <= num_units={model.num_units}")
    hf = model.hf if inplace else copy.deepcopy(model.hf)
    out = SplitModel(hf, name=model.name)
    n = 0
    for u in out.units[:ell]:
        for mod in u.modules:
            if isinstance(mod, (nn.Linear, nn.Embedding)) or type(mod).__name__ == "Conv1D":
                # a unit's module is itself a leaf (embed table, lm_head): swap it in its parent
                n += _swap_leaf(hf, mod, bits, group_size)
            else:
                n += _replace_children(mod, bits, group_size)
    out = SplitModel(hf, name=model.name)  # re-read the (swapped) modules
    out.front_bits, out.front_units, out.quantized_modules = bits, ell, n
    return out


def _swap_leaf(root: nn.Module, leaf: nn.Module, bits: int, group_size: int) -> int:
    for parent in root.modules():
        for name, child in parent.named_children():
            if child is leaf:
                tmp = nn.Module()
                tmp.add_module("x", leaf)
                _replace_children(tmp, bits, group_size)
                setattr(parent, name, tmp.x)
                return 1
    raise RuntimeError("module not found in the model")


def quantized_front_profile(name_or_config, ell: int, bits: int = 8, *, dtype=None, group_size: int = 32):
    """Profile of a model whose front ``[0, ell)`` is quantized, from its config alone
    (meta device: no weights)."""
    from slicer.actors.models.profiling import build_meta_model, profile_of

    m = build_meta_model(name_or_config, dtype=dtype)
    q = quantize_front(m, ell, bits, group_size=group_size, inplace=True)
    return profile_of(q)
