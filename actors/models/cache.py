"""Per-segment KV cache: what one node holds for the segment ``[a, b)`` it runs.

A segment's cache holds only the attention layers inside its own units, so an edge
device running ``[0, ell)`` and the server running ``[ell, n)`` each keep their own part
of the model's KV cache, and neither ever sees the other's. It implements the small
part of ``transformers``' ``Cache`` interface that the decoder layers call
(``update(key, value, layer_idx)``), so the model's own attention code fills it.

Storage never copies a history: each layer's keys and values live in one buffer
``(B, kv_heads, capacity, head_dim)`` allocated at the first step for the session's
admitted context (``capacity``), new keys/values are written in place at
``[length, length + T)`` and attention reads a view ``[:length + T]``. A cache without a
declared capacity (the edge, tests) grows by doubling, so its copies are amortised
O(1) per token. A batched step over sessions of different lengths (``BatchStep``) writes
each session's new keys into its own buffer and runs attention per session on views:
nothing is padded, stacked or re-split (NOTES.md measured the old ``torch.cat`` growth +
re-stacking at 54-60% of a server step at 8+ sessions and context 256+).

Positions: the cache always starts at absolute position 0, so ``length`` is the
absolute position of the next token (``SplitModel.run`` checks this).
"""
from __future__ import annotations

import sys
import threading
from dataclasses import dataclass, field

import torch


class CacheFullError(ValueError):
    """A step would write past the cache's admitted capacity."""


@dataclass
class SegmentCache:
    """KV cache of one segment ``[a, b)`` for one batch of sequences of equal length."""

    a: int
    """First unit of the segment."""
    b: int
    """One past the last unit of the segment."""
    layer_ids: tuple[int, ...] = ()
    """Attention-layer indices (the model's own ``layer_idx``) this segment holds."""
    capacity: int | None = None
    """Tokens the buffers hold (the admitted context); None: grow by doubling."""
    length: int = 0
    """Tokens seen so far by this segment (= absolute position of the next token)."""
    _k: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)
    """``layer_idx -> keys (B, kv_heads, capacity, head_dim)``: the preallocated buffer."""
    _v: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)

    # --- the part of transformers' Cache interface the decoder layers call ------------
    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        """Write the new keys/values ``(B, kv_heads, T, head_dim)`` of ``layer_idx`` at
        ``[length, length + T)`` in place and return views of all of them ``[:length + T]``."""
        return self.write(layer_idx, key_states, value_states)

    def write(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if layer_idx not in self.layer_ids:
            raise ValueError(
                f"layer {layer_idx} is not in this cache's segment [{self.a}, {self.b}) "
                f"(holds layers {list(self.layer_ids)})"
            )
        T = int(k.shape[2])
        end = self.length + T
        buf_k = self._k.get(layer_idx)
        if buf_k is None or buf_k.shape[2] < end:
            buf_k = self._grow(layer_idx, k, v, end)
        buf_v = self._v[layer_idx]
        buf_k[:, :, self.length:end].copy_(k)  # in place: the history is never copied
        buf_v[:, :, self.length:end].copy_(v)
        return buf_k[:, :, :end], buf_v[:, :, :end]  # views (B, kvh, length+T, hd)

    def _grow(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor, need: int) -> torch.Tensor:
        if self.capacity is not None:
            if need > self.capacity:
                raise CacheFullError(f"step needs {need} cached tokens but the cache was admitted for "
                                     f"capacity={self.capacity}")
            cap = self.capacity
        else:
            old = self._k.get(layer_idx)
            cap = max(need, 2 * (old.shape[2] if old is not None else 0), 16)
        B, kvh, _, hd = k.shape
        nk = k.new_empty(B, kvh, cap, hd)  # (B, kvh, cap, hd)
        nv = v.new_empty(B, v.shape[1], cap, v.shape[3])
        old_k, old_v = self._k.get(layer_idx), self._v.get(layer_idx)
        if old_k is not None and self.length:  # growth of a cache without capacity only
            nk[:, :, :self.length].copy_(old_k[:, :, :self.length])
            nv[:, :, :self.length].copy_(old_v[:, :, :self.length])
        self._k[layer_idx], self._v[layer_idx] = nk, nv
        return nk

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.length

    # --- helpers ---------------------------------------------------------------------
    @property
    def layers(self) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """``layer_idx -> (keys, values)`` views ``(B, kv_heads, length, head_dim)``."""
        return {lid: (k[:, :, :self.length], self._v[lid][:, :, :self.length]) for lid, k in self._k.items()}

    @property
    def nbytes(self) -> int:
        """Bytes the buffers hold (allocated capacity, not only ``length``): the memory
        this cache takes from its process."""
        return sum(t.numel() * t.element_size() for d in (self._k, self._v) for t in d.values())

    @property
    def batch_size(self) -> int:
        for k in self._k.values():
            return int(k.shape[0])
        return 0

    def copy(self) -> SegmentCache:
        """An independent copy (its own buffers)."""
        c = SegmentCache(self.a, self.b, self.layer_ids, self.capacity, self.length)
        c._k = {lid: t.clone() for lid, t in self._k.items()}
        c._v = {lid: t.clone() for lid, t in self._v.items()}
        return c


# --- batched steps: per-session attention on views ----------------------------------
_ACTIVE = threading.local()  # .step: the BatchStep of the batched forward running in this thread
ATTN_NAME = "slicer_batch"
"""The ``transformers`` attention implementation ``SplitModel.run_batch`` switches to
for the duration of a batched step (registered once, on first use)."""


class BatchStep:
    """Several sessions' caches in one batched step (``SplitModel.run_batch``).

    The projections and MLPs run on the packed new tokens ``(1, sum T_i, H)``; each
    attention layer writes session i's new keys/values (its slice of the row,
    ``[offset_i, offset_i + T_i)``) into session i's own buffer and attends over the
    view ``[:past_i + T_i]`` with session i's own causal (and sliding-window) mask.
    Nothing is padded; no history is copied."""

    def __init__(self, caches: list[SegmentCache], layer_ids: tuple[int, ...], new_lens: list[int],
                 offsets: list[int], base_impl: str, window_of):
        self.caches = caches
        self.layer_ids = layer_ids
        self.past_lens = [c.length for c in caches]
        self.new_lens = new_lens
        self.offsets = offsets
        """Session i's first row in the packed step."""
        self.base_impl = base_impl
        self.window_of = window_of
        self.views: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self._masks: dict[tuple, torch.Tensor | None] = {}

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        """Write each session's new keys/values (its slice ``(1, kvh, T_i, hd)`` of the
        packed ``(1, kvh, sum T_i, hd)``) in place; the attention function reads the
        per-session views stored here."""
        self.views[layer_idx] = [
            c.write(layer_idx, key_states[:, :, o:o + t], value_states[:, :, o:o + t])
            for c, o, t in zip(self.caches, self.offsets, self.new_lens)
        ]
        return key_states, value_states

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return max(self.past_lens) if self.past_lens else 0

    def finish(self) -> None:
        for c, t in zip(self.caches, self.new_lens):
            c.length += t

    def mask(self, i: int, win: int | None, dtype: torch.dtype, device) -> torch.Tensor | None:
        """Session i's mask ``(1, 1, T_i, past_i + T_i)`` (bool for SDPA, additive for
        eager); None where plain full attention is right (one new token, no window)."""
        T, P = self.new_lens[i], self.past_lens[i]
        eager = self.base_impl == "eager"
        key = (i, win, eager)
        if key not in self._masks:
            if T == 1 and (not win or P + 1 <= win):
                self._masks[key] = None
            else:
                q = torch.arange(T, device=device)[:, None] + P  # (T, 1) absolute query positions
                s = torch.arange(P + T, device=device)[None, :]  # (1, S)
                valid = s <= q
                if win:
                    valid = valid & (q - s < win)
                valid = valid[None, None]  # (1, 1, T, S)
                if eager:
                    self._masks[key] = torch.zeros(valid.shape, dtype=dtype, device=device).masked_fill(
                        ~valid, torch.finfo(dtype).min)
                else:
                    self._masks[key] = valid
        return self._masks[key]


def _base_function(module, impl: str):
    if impl == "eager":
        return sys.modules[type(module).__module__].eager_attention_forward
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    return ALL_ATTENTION_FUNCTIONS[impl]


def base_impl(config) -> str:
    """The model's own attention implementation, also while a batched step has switched
    ``config._attn_implementation`` to ``ATTN_NAME`` (another thread may be running)."""
    impl = getattr(config, "_attn_implementation", None) or "eager"
    if impl == ATTN_NAME:
        return _SWITCHED.get(id(config), (0, "sdpa"))[1]
    return impl


def _batch_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Attention of a batched step: per session, the model's own attention function
    (SDPA or eager) on that session's cache views. ``query`` ``(1, heads, sum T_i, hd)``
    (packed); returns ``(1, sum T_i, heads, hd)`` like the functions it calls.
    Called from a thread that is not running a batched step (the model's config is
    shared), it is the model's own attention."""
    bs: BatchStep | None = getattr(_ACTIVE, "step", None)
    if bs is None:
        return _base_function(module, base_impl(module.config))(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    fn = _base_function(module, bs.base_impl)
    views = bs.views[module.layer_idx]
    win = bs.window_of(module.layer_idx)
    _, h, rows, hd = query.shape
    out = query.new_empty(1, rows, h, hd)  # (1, sum T_i, heads, hd)
    for i, (k, v) in enumerate(views):
        off, t = bs.offsets[i], bs.new_lens[i]
        o, _ = fn(module, query[:, :, off:off + t], k, v, bs.mask(i, win, query.dtype, query.device),
                  scaling=scaling, dropout=dropout, **kwargs)
        out[0, off:off + t] = o[0]  # o: (1, T_i, heads, hd)
    return out, None


def _register() -> None:
    from transformers import AttentionInterface

    if ATTN_NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(ATTN_NAME, _batch_attention)


_SWITCHED: dict[int, tuple[int, str]] = {}  # id(config) -> (batched steps running, base implementation)
_SWITCH_LOCK = threading.Lock()


class active_batch:
    """Context manager: run the model's attention per session for ``step``. The
    config's implementation is switched while any thread runs a batched step of that
    model (counted) and restored by the last one; other threads' calls meanwhile go
    through ``_batch_attention`` to the model's own attention."""

    def __init__(self, config, step: BatchStep):
        self.config, self.step = config, step

    def __enter__(self):
        _register()
        self.prev = getattr(_ACTIVE, "step", None)
        _ACTIVE.step = self.step
        with _SWITCH_LOCK:
            n, base = _SWITCHED.get(id(self.config), (0, self.step.base_impl))
            _SWITCHED[id(self.config)] = (n + 1, base)
            self.config._attn_implementation = ATTN_NAME  # the layers read it at call time
        return self.step

    def __exit__(self, *exc):
        with _SWITCH_LOCK:
            n, base = _SWITCHED[id(self.config)]
            if n <= 1:
                del _SWITCHED[id(self.config)]
                self.config._attn_implementation = base
            else:
                _SWITCHED[id(self.config)] = (n - 1, base)
        _ACTIVE.step = self.prev
        return False
