"""Model profiles: what the planner knows about a model, layer by layer.

This is the contract between `actors/` (which builds profiles from real or meta-device
models, and measures them) and `policies/` (which plans from them). A profile is plain
data, so it can be cached as JSON and built for models nobody here has (from a config on
the meta device: no weights needed).

Layer indexing: a model is a list of ``num_layers`` split units ``L_1 .. L_n``. A split at
``ell`` (0 < ell < n... see ``split_points``) means the edge runs units ``[0, ell)`` and the
feature ``x_ell`` (the output of unit ``ell - 1``) crosses the wire. Unit 0 of an LLM is the
embedding, the last unit is final norm + LM head, so split points are the boundaries
between decoder blocks.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class LayerProfile:
    """One split unit (an embedding, a decoder block, a head, a ResNet stage...)."""

    name: str
    """Human-readable name, e.g. ``"embed"``, ``"block.3"``, ``"head"``."""
    param_bytes: int
    """Bytes of this unit's parameters at the profile's dtype (``ModelProfile.dtype``)."""
    num_params: int
    """Number of parameters (independent of dtype; used to recompute bytes per precision)."""
    flops_per_token: float
    """Forward FLOPs per token for LLMs (per image for vision models), excluding attention
    over the context; see ``attn_flops_per_token_per_ctx``."""
    attn_flops_per_token_per_ctx: float = 0.0
    """Extra FLOPs per token per context position (attention scores and weighted sum):
    decoding at context length ``c`` costs ``flops_per_token + c * this``."""
    out_shape: tuple[int, ...] = ()
    """Shape of the unit's output feature per token for LLMs (``(hidden,)``), per image for
    vision models (e.g. ``(C, H, W)``)."""
    out_elements: int = 0
    """Elements of the output feature per token (per image)."""
    kv_bytes_per_token: int = 0
    """KV-cache bytes per token held by this unit (0 for units without attention)."""


@dataclass(frozen=True)
class ModelProfile:
    """A whole model as a list of split units, plus what a plan needs to know about it."""

    name: str
    """Model name or path it was built from."""
    family: str
    """``llama``, ``gpt2``, ``gpt_neox``, ``resnet``, ``vit``..."""
    kind: str
    """``"causal_lm"`` (autoregressive) or ``"vision"`` (single-shot)."""
    dtype: str
    """Precision ``param_bytes`` and feature bytes refer to (``"float32"``, ``"bfloat16"``...)."""
    layers: tuple[LayerProfile, ...]
    input_bytes_per_token: int = 4
    """Bytes of the raw input per token (a token id) or per image, for cloud-only plans."""
    vocab_size: int = 0
    hidden_size: int = 0
    source: str = "analytic"
    """``"analytic"`` (from a config, meta device) or ``"measured"`` (timed on this machine)."""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def split_points(self) -> list[int]:
        """Valid split points ``ell``: the edge runs ``[0, ell)``. ``0`` is cloud-only and
        ``num_layers`` is edge-only; these are included."""
        return list(range(self.num_layers + 1))

    def front_param_bytes(self, ell: int) -> int:
        return sum(l.param_bytes for l in self.layers[:ell])

    def front_num_params(self, ell: int) -> int:
        return sum(l.num_params for l in self.layers[:ell])

    def kv_bytes_per_token(self, a: int, b: int) -> int:
        return sum(l.kv_bytes_per_token for l in self.layers[a:b])

    def feature_elements(self, ell: int) -> int:
        """Elements of the feature crossing split ``ell`` (per token / per image)."""
        if ell <= 0:
            raise ValueError("split 0 sends the raw input, not a feature")
        return self.layers[ell - 1].out_elements

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> ModelProfile:
        d = json.loads(text)
        layers = tuple(
            LayerProfile(**{**l, "out_shape": tuple(l.get("out_shape", ()))}) for l in d.pop("layers")
        )
        return cls(layers=layers, **d)
