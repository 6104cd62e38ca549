"""Per-segment KV cache: what one node holds for the segment ``[a, b)`` it runs.

A segment's cache holds only the attention layers inside its own units, so an edge
device running ``[0, ell)`` and the server running ``[ell, n)`` each keep their own part
of the model's KV cache, and neither ever sees the other's. It implements the small
part of ``transformers``' ``Cache`` interface that the decoder layers call
(``update(key, value, layer_idx)``), so the model's own attention code fills it.

Positions: the cache always starts at absolute position 0, so ``length`` is the
absolute position of the next token (``SplitModel.run`` checks this).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class SegmentCache:
    """KV cache of one segment ``[a, b)`` for one batch of sequences of equal length."""

    a: int
    """First unit of the segment."""
    b: int
    """One past the last unit of the segment."""
    layer_ids: tuple[int, ...] = ()
    """Attention-layer indices (the model's own ``layer_idx``) this segment holds."""
    layers: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    """``layer_idx -> (keys, values)``, each ``(B, kv_heads, length, head_dim)``."""
    length: int = 0
    """Tokens seen so far by this segment (= absolute position of the next token)."""

    # --- the part of transformers' Cache interface the decoder layers call ------------
    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        """Append the new keys/values ``(B, kv_heads, T, head_dim)`` of ``layer_idx`` and
        return all keys/values of that layer, old then new."""
        if layer_idx not in self.layer_ids:
            raise ValueError(
                f"layer {layer_idx} is not in this cache's segment [{self.a}, {self.b}) "
                f"(holds layers {list(self.layer_ids)})"
            )
        old = self.layers.get(layer_idx)
        if old is not None:
            key_states = torch.cat([old[0], key_states], dim=2)  # (B, kvh, S+T, hd)
            value_states = torch.cat([old[1], value_states], dim=2)
        self.layers[layer_idx] = (key_states, value_states)
        return key_states, value_states

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.length

    # --- helpers ---------------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        """Bytes held by the cached keys and values."""
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self.layers.values())

    @property
    def batch_size(self) -> int:
        for k, _ in self.layers.values():
            return int(k.shape[0])
        return 0

    def copy(self) -> SegmentCache:
        """An independent copy (tensors are immutable once stored: a shallow copy of the
        dict is enough, since ``update`` replaces entries instead of writing in place)."""
        return SegmentCache(self.a, self.b, self.layer_ids, dict(self.layers), self.length)


class _BatchCache:
    """Several sessions' caches stacked for one batched step (``SplitModel.run_batch``).

    Each session's keys/values are right-padded to the longest session (``past_max``)
    and stacked on the batch dimension; the attention mask hides the padding. New keys
    and values are appended after the padded block, then split back per session."""

    def __init__(self, caches: list[SegmentCache], layer_ids: tuple[int, ...]):
        self.caches = caches
        self.layer_ids = layer_ids
        self.past_lens = [c.length for c in caches]
        self.past_max = max(self.past_lens) if caches else 0
        self.stacked: dict[int, tuple[torch.Tensor, torch.Tensor] | None] = {}
        self.new: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for lid in layer_ids:
            present = [c.layers.get(lid) for c in caches]
            if self.past_max == 0 or all(p is None for p in present):
                self.stacked[lid] = None
                continue
            ref = next(p for p in present if p is not None)[0]
            kvh, hd = ref.shape[1], ref.shape[3]
            ks, vs = [], []
            for p, n in zip(present, self.past_lens):
                pad = self.past_max - n
                if p is None:
                    z = ref.new_zeros(1, kvh, self.past_max, hd)
                    ks.append(z)
                    vs.append(z)
                    continue
                k, v = p
                if pad:
                    k = torch.nn.functional.pad(k, (0, 0, 0, pad))  # (1, kvh, past_max, hd)
                    v = torch.nn.functional.pad(v, (0, 0, 0, pad))
                ks.append(k)
                vs.append(v)
            self.stacked[lid] = (torch.cat(ks, 0), torch.cat(vs, 0))  # (B, kvh, past_max, hd)

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        self.new[layer_idx] = (key_states, value_states)
        old = self.stacked.get(layer_idx)
        if old is None:
            if self.past_max:
                raise RuntimeError(f"layer {layer_idx} has no cached keys but sessions have history")
            return key_states, value_states
        return torch.cat([old[0], key_states], 2), torch.cat([old[1], value_states], 2)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.past_max

    def scatter_back(self, new_lens: list[int]) -> None:
        """Write each session's keys/values (its history plus its new tokens) back."""
        for i, (c, n_past, n_new) in enumerate(zip(self.caches, self.past_lens, new_lens)):
            for lid, (k_new, v_new) in self.new.items():
                k_i = k_new[i : i + 1, :, :n_new]  # (1, kvh, T_i, hd)
                v_i = v_new[i : i + 1, :, :n_new]
                old = c.layers.get(lid)
                if old is not None:
                    k_i = torch.cat([old[0], k_i], 2)
                    v_i = torch.cat([old[1], v_i], 2)
                c.layers[lid] = (k_i, v_i)
            c.length = n_past + n_new
