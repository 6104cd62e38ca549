"""Model families: how each supported ``transformers`` architecture splits into units.

An adapter wraps a loaded Hugging Face model and exposes its split units, calling the
model's own modules (embeddings, decoder layers with their attention code, rotary
embedding, norms, heads), so split execution does exactly the model's math.

Units of a decoder LLM: ``0`` = token (and position) embedding, ``1..n_layers`` = the
decoder blocks, last = final norm + LM head. Units of a vision model: the stem
(patch/conv embedding), the blocks, the head (pool/norm + classifier).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Unit:
    """One split unit of a model."""

    name: str
    """``"embed"``, ``"block.3"``, ``"head"``, ``"stem"``..."""
    modules: tuple[nn.Module, ...]
    """The model's own modules this unit runs (their parameters are the unit's)."""
    attn_layer: int | None = None
    """The model's ``layer_idx`` of the attention layer inside, if any (its KV cache)."""


class DecoderAdapter:
    """Common code of decoder-only LLM families; subclasses name the modules."""

    kind = "causal_lm"
    family = ""

    def __init__(self, model: nn.Module):
        self.model = model
        self.config = model.config

    # subclasses define: embed_modules, blocks, head_modules, embed(), head(), call_block()
    rotary: nn.Module | None = None

    def units(self) -> list[Unit]:
        us = [Unit("embed", tuple(self.embed_modules))]
        us += [Unit(f"block.{i}", (blk,), attn_layer=i) for i, blk in enumerate(self.blocks)]
        us.append(Unit("head", tuple(self.head_modules)))
        return us

    def position_embeddings(self, hidden: torch.Tensor, position_ids: torch.Tensor):
        if self.rotary is None:
            return None
        return self.rotary(hidden, position_ids=position_ids)

    # --- analytic shape facts used by profiles ---------------------------------------
    @property
    def hidden_size(self) -> int:
        return int(self.config.hidden_size)

    @property
    def num_heads(self) -> int:
        return int(self.config.num_attention_heads)

    @property
    def num_kv_heads(self) -> int:
        return int(getattr(self.config, "num_key_value_heads", None) or self.num_heads)

    @property
    def head_dim(self) -> int:
        return int(getattr(self.config, "head_dim", None) or self.hidden_size // self.num_heads)

    @property
    def sliding_window(self) -> int | None:
        if getattr(self.config, "use_sliding_window", True) is False:
            return None
        w = getattr(self.config, "sliding_window", None)
        return int(w) if w else None

    def window_of(self, block: int) -> int | None:
        """Sliding window of decoder block ``block`` (None: full causal attention).
        Configs with ``layer_types`` (Qwen2 with ``use_sliding_window``) mix both."""
        types = getattr(self.config, "layer_types", None)
        if types:
            if types[block] != "sliding_attention":
                return None
            w = getattr(self.config, "sliding_window", None)
            return int(w) if w else None
        return self.sliding_window

    @property
    def max_positions(self) -> int | None:
        return None


class LlamaAdapter(DecoderAdapter):
    """Llama 2/3, Mistral/Codestral, Qwen2/2.5: ``model.model.{embed_tokens, layers,
    norm, rotary_emb}`` and ``model.lm_head``; RoPE; GQA."""

    family = "llama"

    def __init__(self, model):
        super().__init__(model)
        base = model.model
        self.embed_modules = [base.embed_tokens]
        self.blocks = list(base.layers)
        self.head_modules = [base.norm, model.lm_head]
        self.rotary = base.rotary_emb

    def embed(self, ids, position_ids):
        return self.model.model.embed_tokens(ids)  # (B, T, H)

    def call_block(self, i, hidden, mask, position_ids, pos_emb, cache):
        return self.blocks[i](
            hidden,
            attention_mask=mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=cache is not None,
            position_embeddings=pos_emb,
        )

    def head(self, hidden):
        return self.model.lm_head(self.model.model.norm(hidden))  # (B, T, V)


class GPT2Adapter(DecoderAdapter):
    """GPT-2: ``transformer.{wte, wpe, drop, h, ln_f}`` and ``lm_head``; learned
    absolute positions (added in unit 0)."""

    family = "gpt2"

    def __init__(self, model):
        super().__init__(model)
        t = model.transformer
        self.embed_modules = [t.wte, t.wpe]
        self.blocks = list(t.h)
        self.head_modules = [t.ln_f, model.lm_head]

    def embed(self, ids, position_ids):
        t = self.model.transformer
        return t.drop(t.wte(ids) + t.wpe(position_ids))  # (B, T, H)

    def call_block(self, i, hidden, mask, position_ids, pos_emb, cache):
        return self.blocks[i](hidden, cache, mask, use_cache=cache is not None, position_ids=position_ids)

    def head(self, hidden):
        return self.model.lm_head(self.model.transformer.ln_f(hidden))

    @property
    def max_positions(self) -> int:
        return int(self.config.n_positions)


class GPTNeoXAdapter(DecoderAdapter):
    """GPT-NeoX / Pythia: ``gpt_neox.{embed_in, layers, final_layer_norm, rotary_emb}``
    and ``embed_out``/``lm_head``; partial rotary, parallel residual."""

    family = "gpt_neox"

    def __init__(self, model):
        super().__init__(model)
        g = model.gpt_neox
        self.embed_modules = [g.embed_in]
        self.blocks = list(g.layers)
        self._lm_head = getattr(model, "embed_out", None) or model.lm_head
        self.head_modules = [g.final_layer_norm, self._lm_head]
        self.rotary = g.rotary_emb

    def embed(self, ids, position_ids):
        g = self.model.gpt_neox
        return g.emb_dropout(g.embed_in(ids))

    def call_block(self, i, hidden, mask, position_ids, pos_emb, cache):
        return self.blocks[i](
            hidden,
            attention_mask=mask,
            position_ids=position_ids,
            layer_past=cache,
            use_cache=cache is not None,
            position_embeddings=pos_emb,
        )

    def head(self, hidden):
        return self._lm_head(self.model.gpt_neox.final_layer_norm(hidden))


class VisionAdapter:
    """Common code of single-shot vision families."""

    kind = "vision"
    family = ""

    def __init__(self, model: nn.Module):
        self.model = model
        self.config = model.config

    def units(self) -> list[Unit]:
        return [Unit(name, tuple(mods)) for name, mods, _ in self._units]

    def run_unit(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return self._units[i][2](x)


class ResNetAdapter(VisionAdapter):
    """ResNet: stem (``embedder``), every residual layer of every stage, head (global
    average pool + classifier)."""

    family = "resnet"

    def __init__(self, model):
        super().__init__(model)
        r = model.resnet
        self._units: list[tuple[str, list[nn.Module], Callable]] = [("stem", [r.embedder], r.embedder)]
        for s, stage in enumerate(r.encoder.stages):
            for j, layer in enumerate(stage.layers):
                self._units.append((f"stage{s}.{j}", [layer], layer))

        def head(x):  # (B, C, h, w) -> (B, num_labels)
            return model.classifier(r.pooler(x))

        self._units.append(("head", [r.pooler, model.classifier], head))


class ViTAdapter(VisionAdapter):
    """ViT: patch + position embedding, the encoder layers, head (final layernorm +
    classifier on the CLS token)."""

    family = "vit"

    def __init__(self, model):
        super().__init__(model)
        v = model.vit
        layers = getattr(v, "layers", None)
        if layers is None:  # older transformers: vit.encoder.layer
            layers = v.encoder.layer
        self._units = [("embed", [v.embeddings], lambda x: v.embeddings(x.to(v.embeddings.patch_embeddings.projection.weight.dtype)))]
        for i, layer in enumerate(layers):
            self._units.append((f"block.{i}", [layer], lambda x, layer=layer: layer(x, None)))

        def head(x):  # (B, 1+P, H) -> (B, num_labels)
            return model.classifier(v.layernorm(x)[:, 0, :])

        self._units.append(("head", [v.layernorm, model.classifier], head))


#: model_type (config.model_type) -> (adapter class, auto class kind)
FAMILIES: dict[str, type] = {
    "llama": LlamaAdapter,
    "mistral": LlamaAdapter,
    "qwen2": LlamaAdapter,
    "gpt2": GPT2Adapter,
    "gpt_neox": GPTNeoXAdapter,
    "resnet": ResNetAdapter,
    "vit": ViTAdapter,
}

SUPPORTED = tuple(FAMILIES)


class UnsupportedModelError(ValueError):
    """The architecture has no adapter; the message lists the supported ones."""


def adapter_for(model: nn.Module):
    mt = getattr(model.config, "model_type", None)
    cls = FAMILIES.get(mt)
    if cls is None:
        raise UnsupportedModelError(unsupported_message(mt))
    return cls(model)


def unsupported_message(model_type) -> str:
    return (
        f"model_type {model_type!r} is not supported; supported model types: "
        + ", ".join(SUPPORTED)
        + " (Llama 2/3, Mistral/Codestral, Qwen2/2.5, GPT-2, GPT-NeoX/Pythia, ResNet, ViT)"
    )


def family_kind(model_type: str) -> str:
    cls = FAMILIES.get(model_type)
    if cls is None:
        raise UnsupportedModelError(unsupported_message(model_type))
    return cls.kind
