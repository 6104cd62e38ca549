"""Split execution of real models: segments, per-segment KV caches, AR modes.

Public API (stable names; other packages build on them)::

    from slicer.actors.models import load_model, profile_from_config, resolve_config

    m = load_model("path/to/folder")            # or a hub name, a config, a dict
    m.num_units, m.kind, m.profile              # "causal_lm" | "vision"; a ModelProfile
    edge_cache = m.new_cache(0, ell)            # each node holds only its own layers
    h = m.run(0, ell, ids, edge_cache)          # ids (B, T) -> hidden (B, T, H)
    srv_cache = m.new_cache(ell, m.num_units)
    logits = m.run(ell, m.num_units, h, srv_cache)   # -> (B, T, V)
    outs = m.run_batch(ell, m.num_units, [h1, h2], [c1, c2])  # sessions of different lengths

Split units
    LLMs: unit ``0`` = token (+ position) embedding, units ``1..n_layers`` = decoder
    blocks, unit ``n_layers + 1`` = final norm + LM head; ``num_units = n_layers + 2``.
    A split at ``ell`` (edge runs ``[0, ell)``) sends the output of unit ``ell - 1``:
    ``ell = 1`` sends the embeddings, ``ell = n_layers + 1`` the last block's output.
    Vision: ResNet = stem, every residual layer of every stage, head (pool + classifier);
    ViT = patch embedding, every encoder layer, head (layernorm + classifier on CLS).

``load_model(src, *, dtype=torch.float32, device="cpu", seed=0, units=None) -> SplitModel``
    ``src``: a local folder or hub name (``from_pretrained``), or a ``PretrainedConfig``
    / dict with ``model_type`` (random weights, seeded). ``units=(a, b)``: only those
    units' weights, read by name from the safetensors (``slicer.actors.models.weights``).
    Unsupported architectures raise ``UnsupportedModelError`` listing the supported ones
    (``SUPPORTED``).

``SplitModel``
    ``.profile`` (``slicer.policies.profile.ModelProfile``), ``.num_units``, ``.kind``,
    ``.family``, ``.config``, ``.hf`` (the transformers model), ``.units``;
    ``new_cache(a, b, capacity=None) -> SegmentCache``; ``ensure_units(a, b)``,
    ``loaded``, ``weight_bytes`` (segment-only weights);
    ``run(a, b, x, cache=None, *, position=None, last_only=False) -> Tensor``
    (``position``: absolute position of ``x[:, 0]``; defaults to ``cache.length``);
    ``run_batch(a, b, xs, caches, positions=None, *, last_only=False) -> list[Tensor]``
    (one session of batch 1 per entry, any lengths; same results as one by one, to
    float tolerance; attention per session on views of each cache, no history copied).

``profile_from_config(name_or_config, *, dtype=None) -> ModelProfile``
    No weights needed (meta device). Shipped configs (``shipped_configs()``): Llama-3-8B,
    Llama-3-70B, Llama-2-7B, Codestral-22B, Qwen2.5-Coder-7B, Llama-3.2-3B, GPT-2,
    Pythia-160M, ResNet-50, ViT-B/16; hub names map to them (``resolve_config``).

AR modes (``slicer.actors.models.generate``): ``EdgeSession`` / ``ServerSession`` exchange
payload bytes (the codec in the loop); ``generate(model, prompt_ids, max_new_tokens,
mode, split, offload_step, codec_cfg)`` runs both halves in one process. Modes:
``"split"``, ``"local-then-offload"`` (SLICER's local-then-offload ``(w, ell)``),
``"edge-only"``, ``"cloud-only"``.

Single-shot (vision): ``slicer.actors.models.generate.single_shot(model, pixel_values, split,
codec_cfg)``, halves ``edge_single_shot`` / ``server_single_shot``.

Front-segment precision (``slicer.actors.models.quant``): ``quantize_front(model, ell, bits)``
returns a copy whose Linear weights (and embedding) in units ``[0, ell)`` are int8
(per-channel) / int4 (group-wise) weight-only; its ``profile`` counts their real bytes.
``quantized_front_profile(name, ell, bits)`` does the same from a config (meta device).

Fidelity (``slicer.actors.models.fidelity``, CLI ``slicer bench fidelity``): ``measure(model,
sequences, split=..., codec_spec=..., mode=...)`` -> next-token agreement, KL,
perplexity ratio, greedy agreement, bits per element.

Tests and other packages can build tiny models of every family from
``slicer.actors.models.testing.TINY_LM`` / ``TINY_VISION`` (milliseconds to build).

``SegmentCache(a, b, layer_ids, capacity, length)`` holds one preallocated buffer of
keys and one of values per attention layer, ``(B, kv_heads, capacity, head_dim)``, written
in place (``layers`` gives the views ``[:length]``; ``copy()`` clones the buffers).
"""
from __future__ import annotations

from slicer.actors.models.cache import SegmentCache
from slicer.actors.models.families import SUPPORTED, UnsupportedModelError
from slicer.actors.models.loading import load_model, resolve_config, shipped_configs
from slicer.actors.models.profiling import profile_from_config, profile_of
from slicer.actors.models.split import SplitModel

__all__ = [
    "SUPPORTED",
    "SegmentCache",
    "SplitModel",
    "UnsupportedModelError",
    "load_model",
    "profile_from_config",
    "profile_of",
    "resolve_config",
    "shipped_configs",
]
