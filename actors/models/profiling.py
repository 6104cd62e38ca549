"""Model profiles (``slicer.policies.profile.ModelProfile``) built from models or configs.

``profile_from_config`` needs no weights: it builds the architecture on the meta device
(no memory, about 0.1 s for a 70B config) and counts each unit's parameters from the
real module tree, so the counts are the model's own. FLOPs are analytic for LLMs
(2 FLOPs per weight of every matrix per token, plus attention over the context) and
counted by ``torch.utils.flop_counter`` on meta tensors for vision models.
"""
from __future__ import annotations

import torch
from torch import nn

from slicer.policies.profile import LayerProfile, ModelProfile

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}


def dtype_of(name) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    try:
        return _DTYPES[str(name).replace("torch.", "")]
    except KeyError:
        raise ValueError(f"dtype {name!r} is not supported: allowed {', '.join(sorted(_DTYPES))}") from None


def dtype_name(dt: torch.dtype) -> str:
    return str(dt).replace("torch.", "")


def _unique_params(modules) -> list[nn.Parameter]:
    seen, out = set(), []
    for m in modules:
        for p in m.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


def unit_num_params(unit) -> int:
    """Parameters of one unit; quantized linears count their original weight elements."""
    n = sum(p.numel() for p in _unique_params(unit.modules))
    for m in unit.modules:
        for q in m.modules():
            n += int(getattr(q, "quant_num_params", 0))
    return n


def unit_param_bytes(unit) -> int:
    """Bytes of one unit's weights as stored (quantized weights at their precision)."""
    b = sum(p.numel() * p.element_size() for p in _unique_params(unit.modules))
    for m in unit.modules:
        for q in m.modules():
            b += int(getattr(q, "quant_nbytes", 0))
    return b


def _matrix_weights(modules) -> int:
    """Elements of every weight matrix applied to each token (Linear, GPT-2's Conv1D,
    and quantized linears)."""
    n = 0
    for m in modules:
        for q in m.modules():
            if hasattr(q, "quant_num_params"):
                n += int(q.in_features * q.out_features)
            elif isinstance(q, nn.Linear) or type(q).__name__ == "Conv1D":
                n += int(q.weight.numel())
    return n


def profile_of(model, *, name: str | None = None, source: str = "analytic") -> ModelProfile:
    """The profile of a ``SplitModel`` (real or meta weights)."""
    dt = model.dtype
    esize = torch.empty((), dtype=dt).element_size()
    layers = []
    extra: dict = {}
    if model.kind == "causal_lm":
        ad = model.adapter
        H, V = ad.hidden_size, int(model.config.vocab_size)
        kv = 2 * ad.num_kv_heads * ad.head_dim * esize  # K and V per token per layer
        # QK^T and AV: 2 FLOPs per multiply-add, head_dim each, per head, per context position
        attn_ctx = 4.0 * ad.num_heads * ad.head_dim
        for i, u in enumerate(model.units):
            is_head = i == model.num_units - 1
            flops = 2.0 * _matrix_weights(u.modules) if i > 0 else 0.0  # embedding: a lookup
            layers.append(LayerProfile(
                name=u.name,
                param_bytes=unit_param_bytes(u),
                num_params=unit_num_params(u),
                flops_per_token=flops,
                attn_flops_per_token_per_ctx=attn_ctx if u.attn_layer is not None else 0.0,
                out_shape=(V,) if is_head else (H,),
                out_elements=V if is_head else H,
                kv_bytes_per_token=kv if u.attn_layer is not None else 0,
            ))
        tied = bool(getattr(model.config, "tie_word_embeddings", False))
        extra["tied_embeddings"] = tied
        extra["total_params_unique"] = sum(p.numel() for p in model.hf.parameters()) + sum(
            int(getattr(q, "quant_num_params", 0)) for q in model.hf.modules())
        if tied:
            extra["note"] = "tied embedding/LM-head weight counted in both the embed and head units (each side of a split holds a copy)"
        if getattr(model, "front_bits", None):
            extra["front_bits"], extra["front_units"] = model.front_bits, model.front_units
        if ad.sliding_window:
            extra["sliding_window"] = ad.sliding_window
        return ModelProfile(
            name=name or model.name, family=model.family, kind="causal_lm", dtype=dtype_name(dt),
            layers=tuple(layers), input_bytes_per_token=4, vocab_size=V, hidden_size=H,
            source=source, extra=extra,
        )
    # vision: shapes and FLOPs by running each unit on a meta tensor of one image
    from torch.utils.flop_counter import FlopCounterMode

    size = int(getattr(model.config, "image_size", 224) or 224)
    ch = int(getattr(model.config, "num_channels", 3) or 3)
    x = torch.empty(1, ch, size, size, dtype=dt, device="meta")
    meta_model = model if model.device.type == "meta" else None
    for i, u in enumerate(model.units):
        if meta_model is not None:
            with FlopCounterMode(display=False) as fc:
                y = model.adapter.run_unit(i, x)
            flops = float(fc.get_total_flops())
        else:
            y, flops = _vision_unit_meta(model, i, x)
        shape = tuple(int(d) for d in y.shape[1:])
        layers.append(LayerProfile(
            name=u.name, param_bytes=unit_param_bytes(u), num_params=unit_num_params(u),
            flops_per_token=flops, out_shape=shape, out_elements=int(torch.Size(shape).numel()),
        ))
        x = y
    extra["image_size"] = size
    extra["input"] = "uint8 pixels, 3 x H x W bytes per image"
    return ModelProfile(
        name=name or model.name, family=model.family, kind="vision", dtype=dtype_name(dt),
        layers=tuple(layers), input_bytes_per_token=ch * size * size, vocab_size=0,
        hidden_size=_int_or_zero(getattr(model.config, "hidden_size", 0)),  # ResNet has a list: 0
        source=source, extra=extra,
    )


def _int_or_zero(v) -> int:
    return int(v) if isinstance(v, int) else 0


def _vision_unit_meta(model, i, x_meta):
    """Run unit ``i`` of a real-weight vision model on a meta tensor via a meta twin."""
    twin = getattr(model, "_meta_twin", None)
    if twin is None:
        from slicer.actors.models.split import SplitModel

        with torch.device("meta"):
            hf = type(model.hf)(model.config).to(model.dtype)
        twin = SplitModel(hf, name=model.name)
        model._meta_twin = twin
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        y = twin.adapter.run_unit(i, x_meta)
    return y, float(fc.get_total_flops())


def build_meta_model(name_or_config, *, dtype=None):
    """A ``SplitModel`` of the architecture on the meta device (no memory, no weights)."""
    from slicer.actors.models.families import (
        FAMILIES,
        UnsupportedModelError,
        unsupported_message,
    )
    from slicer.actors.models.loading import _auto_class, resolve_config
    from slicer.actors.models.split import SplitModel

    cfg = resolve_config(name_or_config)
    if cfg.model_type not in FAMILIES:
        raise UnsupportedModelError(unsupported_message(cfg.model_type))
    if dtype is None:
        dtype = getattr(cfg, "dtype", None) or getattr(cfg, "torch_dtype", None) or torch.float32
    dt = dtype_of(dtype)
    with torch.device("meta"):
        hf = _auto_class(cfg.model_type).from_config(cfg, dtype=dt)
    name = str(name_or_config) if isinstance(name_or_config, str) else (getattr(cfg, "_name_or_path", "") or cfg.model_type)
    return SplitModel(hf, name=name)


def profile_from_config(name_or_config, *, dtype=None) -> ModelProfile:
    """Profile of a model from its config alone (no weights, no download for shipped
    configs): the architecture is built on the meta device. ``dtype`` defaults to the
    config's own (``dtype``/``torch_dtype``), else float32."""
    return profile_of(build_meta_model(name_or_config, dtype=dtype))
