"""`SplitModel`: a loaded model as a list of split units; any segment ``[a, b)`` runs
with its own KV cache, alone or batched over sessions of different lengths."""
from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn

from slicer.actors.models.cache import BatchStep, SegmentCache, active_batch, base_impl
from slicer.actors.models.families import DecoderAdapter, Unit, adapter_for


class SplitModel:
    """A model cut into ``num_units`` split units (see ``slicer.actors.models`` for the unit
    layout). Built by ``load_model``; holds the Hugging Face model in ``.hf``."""

    def __init__(self, hf_model: nn.Module, name: str = "", loader=None):
        """``loader``: a ``slicer.actors.models.weights.SegmentLoader`` when the model was
        built on the meta device and only some units hold weights (``load_model(...,
        units=...)``); None: every unit is loaded."""
        hf_model.eval()
        self.hf = hf_model
        self.name = name or getattr(hf_model.config, "_name_or_path", "") or hf_model.config.model_type
        self.adapter = adapter_for(hf_model)
        self.units: list[Unit] = self.adapter.units()
        self._profile = None
        self._loader = loader
        self.loaded: set[int] = set(range(len(self.units))) if loader is None else set()
        """Units whose weights this process holds."""
        p = next(hf_model.parameters())
        self._dtype = loader.dtype if loader is not None else p.dtype  # before any unit is loaded
        self._device = loader.device if loader is not None else p.device

    def ensure_units(self, a: int, b: int) -> int:
        """Materialise the weights of units ``[a, b)`` that are not loaded yet (segment-only
        models); returns the bytes added (0 when all were there)."""
        self._check_segment(a, b)
        missing = [i for i in range(a, b) if i not in self.loaded]
        if not missing:
            return 0
        self.profile  # noqa: B018  (from the meta model, where tied weights are still one tensor)
        mods = [m for i in missing for m in self.units[i].modules]
        added = self._loader.load(mods)
        rot = getattr(self.adapter, "rotary", None)
        if rot is not None and any(i for i in missing):  # blocks need the rotary tables
            fixed = self._loader.fix_rotary(rot)
            if fixed is not rot:
                for parent in self.hf.modules():
                    for cname, child in list(parent.named_children()):
                        if child is rot:
                            setattr(parent, cname, fixed)
                self.adapter.rotary = fixed
        self.loaded.update(missing)
        return added

    @property
    def weight_bytes(self) -> int:
        """Bytes of the parameters and buffers this process holds (meta ones excluded,
        tied ones once)."""
        seen, total = set(), 0
        for t in list(self.hf.parameters()) + list(self.hf.buffers()):
            if t.device.type == "meta" or id(t) in seen:
                continue
            seen.add(id(t))
            total += t.numel() * t.element_size()
        return total

    # --- facts ---------------------------------------------------------------------
    @property
    def config(self):
        return self.hf.config

    @property
    def kind(self) -> str:
        """``"causal_lm"`` or ``"vision"``."""
        return self.adapter.kind

    @property
    def family(self) -> str:
        return self.adapter.family

    @property
    def num_units(self) -> int:
        return len(self.units)

    def _first_real(self):
        return next((p for p in self.hf.parameters() if p.device.type != "meta" and p.is_floating_point()), None)

    @property
    def dtype(self) -> torch.dtype:
        if self._loader is not None:  # segment-only: every real tensor is on the loader's dtype
            return self._dtype
        p = self._first_real()
        return p.dtype if p is not None else self._dtype

    @property
    def device(self) -> torch.device:
        # read several times per step: a segment-only model answers without walking the
        # (meta) parameters of the units it does not hold
        if self._loader is not None:
            return self._device
        p = self._first_real()
        return p.device if p is not None else self._device

    @property
    def profile(self):
        """``slicer.policies.profile.ModelProfile`` of this model (parameters counted from the
        loaded modules, FLOPs analytic; see ``slicer.actors.models.profiling``)."""
        if self._profile is None:
            from slicer.actors.models.profiling import profile_of

            self._profile = profile_of(self)
        return self._profile

    def attn_layers(self, a: int, b: int) -> tuple[int, ...]:
        """The model's attention-layer indices inside units ``[a, b)``."""
        return tuple(u.attn_layer for u in self.units[a:b] if u.attn_layer is not None)

    def new_cache(self, a: int, b: int, capacity: int | None = None) -> SegmentCache:
        """An empty KV cache for the segment ``[a, b)`` (only that segment's layers),
        its buffers sized for ``capacity`` tokens at the first step (None: grown by
        doubling)."""
        self._check_segment(a, b)
        if capacity is not None and (not isinstance(capacity, int) or capacity < 1):
            raise ValueError(f"capacity={capacity!r} is invalid: need a positive int or None")
        return SegmentCache(a, b, self.attn_layers(a, b), capacity)

    def _check_segment(self, a: int, b: int) -> None:
        if not (isinstance(a, int) and isinstance(b, int) and 0 <= a < b <= self.num_units):
            raise ValueError(f"segment [a={a}, b={b}) is invalid: need 0 <= a < b <= num_units={self.num_units}")

    def _check_loaded(self, a: int, b: int) -> None:
        missing = [i for i in range(a, b) if i not in self.loaded]
        if missing:
            raise ValueError(f"segment [{a}, {b}) needs units {missing[0]}..{missing[-1]} whose weights this process "
                             f"did not load (loaded: {sorted(self.loaded) or 'none'}); call ensure_units first")

    # --- execution -------------------------------------------------------------------
    @torch.no_grad()
    def run(self, a: int, b: int, x: torch.Tensor, cache: SegmentCache | None = None, *, position: int | None = None,
            last_only: bool = False) -> torch.Tensor:
        """Run units ``[a, b)`` on ``x``.

        LLMs: ``x`` is token ids ``(B, T)`` when ``a == 0``, else hidden states
        ``(B, T, H)``; returns the hidden states after unit ``b-1`` ``(B, T, H)``, or
        logits ``(B, T, V)`` when ``b == num_units``. ``cache`` (from ``new_cache(a,
        b)``) is read and extended; ``position`` is the absolute position of ``x[:, 0]``
        (default: ``cache.length``, or 0 without a cache) and must equal
        ``cache.length`` when the segment has attention layers.

        Vision: ``x`` is ``pixel_values`` ``(B, 3, H, W)`` when ``a == 0``, else the
        feature of unit ``a-1``; no cache, no position."""
        self._check_segment(a, b)
        self._check_loaded(a, b)
        if self.kind == "vision":
            x = x.to(self.device)
            for i in range(a, b):
                x = self.adapter.run_unit(i, x)
            return x
        if cache is not None and (cache.a, cache.b) != (a, b):
            raise ValueError(f"cache is for segment [{cache.a}, {cache.b}), not [{a}, {b})")
        if position is None:
            position = cache.length if cache is not None else 0
        if cache is not None and cache.layer_ids and position != cache.length:
            raise ValueError(f"position={position} but the cache holds {cache.length} tokens; they must be equal")
        B, T = x.shape[0], x.shape[1]
        self._check_positions(position, T)
        past = cache.length if (cache is not None and cache.layer_ids) else 0
        out = self._forward(
            a, b, x, cache,
            past_lens=[past] * B, past_max=past, new_lens=[T] * B, positions=[position] * B, last_only=last_only,
        )
        if cache is not None:
            cache.length = position + T
        return out

    @torch.no_grad()
    def run_batch(
        self,
        a: int,
        b: int,
        xs: Sequence[torch.Tensor],
        caches: Sequence[SegmentCache],
        positions: Sequence[int] | None = None,
        *,
        last_only: bool = False,
    ) -> list[torch.Tensor]:
        """Run ``[a, b)`` for several sessions at once (the server's batched step).

        ``xs[i]`` is session i's input ``(1, T_i, H)`` (or ids ``(1, T_i)`` when
        ``a == 0``), ``caches[i]`` its own cache (extended in place), ``positions[i]``
        its absolute position (default ``caches[i].length``). Sessions may differ in
        history and in new-token count: the new tokens are packed into one row
        ``(1, sum T_i, H)`` for the projections and MLPs (nothing is padded: a T-token
        prefill and seven decodes cost T + 7 rows, not 8 x T), while attention runs per
        session on its slice of the row and views of its own preallocated cache (no
        history is copied). Returns one output per
        session, ``(1, T_i, ...)``, equal (to float tolerance) to running them one by
        one. ``last_only`` (LLMs, ``b == num_units``): the head runs on each session's
        last position only and outputs are ``(1, 1, V)`` (a server needs no more to
        pick the next token, and a prefill's logits would be ``T_i x V``)."""
        self._check_segment(a, b)
        self._check_loaded(a, b)
        if self.kind == "vision":
            return [self.run(a, b, x) for x in xs]
        n = len(xs)
        if len(caches) != n:
            raise ValueError(f"{n} inputs but {len(caches)} caches")
        if n == 0:
            return []
        for i, (x, c) in enumerate(zip(xs, caches)):
            if x.shape[0] != 1:
                raise ValueError(f"xs[{i}] has batch {x.shape[0]}; run_batch takes one session per entry (batch 1)")
            if (c.a, c.b) != (a, b):
                raise ValueError(f"caches[{i}] is for segment [{c.a}, {c.b}), not [{a}, {b})")
        if len({id(c) for c in caches}) != n:
            raise ValueError("a cache appears twice in one batch: each session takes one step at a time")
        positions = [c.length for c in caches] if positions is None else list(positions)
        layer_ids = self.attn_layers(a, b)
        if layer_ids:
            for i, (p, c) in enumerate(zip(positions, caches)):
                if p != c.length:
                    raise ValueError(f"positions[{i}]={p} but caches[{i}] holds {c.length} tokens")
        new_lens = [int(x.shape[1]) for x in xs]
        for p, t in zip(positions, new_lens):
            self._check_positions(p, t)
        for i, (c, t) in enumerate(zip(caches, new_lens)):
            if layer_ids and c.capacity is not None and c.length + t > c.capacity:
                raise ValueError(f"caches[{i}] holds {c.length} of capacity={c.capacity} tokens; "
                                 f"{t} more do not fit")
        xb = torch.cat([x.to(self.device) for x in xs], 1)  # (1, sum T_i[, H]): the new tokens only, packed
        dev = xb.device
        position_ids = torch.cat([torch.arange(p, p + t, device=dev) for p, t in zip(positions, new_lens)])[None]
        offsets = list(itertools.accumulate(new_lens, initial=0))  # session i's rows: [offsets[i], offsets[i+1])
        last_rows = torch.tensor(offsets[1:], device=dev) - 1 if last_only and b == self.num_units else None
        if not layer_ids:
            out = self._forward(a, b, xb, None, past_lens=None, past_max=0, new_lens=None, positions=None,
                                position_ids=position_ids, last_rows=last_rows)
            for c, p, t in zip(caches, positions, new_lens):
                c.length = p + t
        else:
            base = base_impl(self.config)
            step = BatchStep(list(caches), layer_ids, new_lens, offsets[:-1], base, self.adapter.window_of)  # block i holds layer i
            with active_batch(self.config, step):
                out = self._forward(a, b, xb, step, past_lens=None, past_max=None, new_lens=None, positions=None,
                                    position_ids=position_ids, last_rows=last_rows)
            step.finish()
        if last_rows is not None:
            return [out[:, i : i + 1] for i in range(n)]  # out: (1, n, V)
        return [out[:, o : o + t] for o, t in zip(offsets, new_lens)]

    def _check_positions(self, position: int, T: int) -> None:
        limit = self.adapter.max_positions
        if position < 0 or (limit is not None and position + T > limit):
            raise ValueError(
                f"positions {position}..{position + T - 1} are outside the model's learned position table "
                f"(0..{limit - 1})" if limit is not None else f"position={position} must be >= 0"
            )

    # --- the one code path of both ---------------------------------------------------
    def _forward(self, a, b, x, cache, *, past_lens, past_max, new_lens, positions, last_only=False,
                 position_ids=None, last_rows=None):
        """``position_ids``/``last_rows``: a packed batched step (``run_batch``) gives its
        rows' positions ``(1, sum T_i)`` and, for ``last_only``, the rows of each
        session's last token; otherwise both follow from ``positions``/``new_lens``."""
        ad: DecoderAdapter = self.adapter
        if x.device != self.device:  # ids or a feature decoded elsewhere: onto the weights' device
            x = x.to(self.device)
        T = x.shape[1]
        dev = x.device
        if position_ids is None:
            t_idx = torch.arange(T, device=dev)
            new_lens_t = torch.tensor(new_lens, device=dev)
            # Pad rows (t >= T_i) reuse the session's last real position, so learned
            # position tables (GPT-2) are never indexed past their end.
            pos_base = torch.tensor(positions, device=dev)[:, None]  # (B, 1)
            rel = torch.minimum(t_idx[None, :], (new_lens_t - 1).clamp(min=0)[:, None])  # (B, T)
            position_ids = pos_base + rel  # (B, T)
        n_units = self.num_units
        has_blocks = any(u.attn_layer is not None for u in self.units[a:b])
        if a == 0:
            h = ad.embed(x, position_ids)  # (B, T, H)
        else:
            h = x.to(self.dtype)
        masks: dict = {}  # window -> mask; blocks with the same window share one
        pos_emb = None
        if has_blocks:
            pos_emb = ad.position_embeddings(h, position_ids)
        for i in range(max(a, 1), min(b, n_units - 1)):
            blk = i - 1
            win = ad.window_of(blk)
            if past_max is None:  # batched step: attention builds each session's own mask
                masks[win] = None
            elif win not in masks:
                masks[win] = self._mask(past_lens, past_max, new_lens, positions, T, h.dtype, dev, win)
            h = ad.call_block(blk, h, masks[win], position_ids, pos_emb, cache)
        if b == n_units:
            if last_rows is not None:  # packed: each session's last row, (1, n, H)
                h = h[:, last_rows]
            elif last_only:  # each row's last real position only: (B, 1, H)
                h = h[torch.arange(h.shape[0], device=dev), torch.tensor(new_lens, device=dev) - 1][:, None]
            h = ad.head(h)  # (B, T, V), or (B, 1, V)
        return h

    def _mask(self, past_lens, past_max, new_lens, positions, T, dtype, dev, win):
        """Attention mask ``(B, 1, T, past_max + T)``: query t of session i sees cached
        key s < past_i and new key j <= t with j < T_i (and, with a sliding window,
        only keys less than ``window`` positions back)."""
        past = torch.tensor(past_lens, device=dev)[:, None, None]  # (B, 1, 1)
        newl = torch.tensor(new_lens, device=dev)[:, None, None]
        q = torch.arange(T, device=dev)[None, :, None]  # (1, T, 1)
        s = torch.arange(past_max + T, device=dev)[None, None, :]  # (1, 1, S)
        is_new = s >= past_max
        j = s - past_max
        valid = torch.where(is_new, (j <= q) & (j < newl), s < past)  # (B, T, S)
        if win:
            pos0 = torch.tensor(positions, device=dev)[:, None, None]
            q_abs = pos0 + q
            k_abs = torch.where(is_new, pos0 + j, s)
            valid = valid & (q_abs - k_abs < win)
        valid = valid[:, None]  # (B, 1, T, S)
        if base_impl(self.config) == "eager":
            return torch.zeros(valid.shape, dtype=dtype, device=dev).masked_fill(~valid, torch.finfo(dtype).min)
        return valid
