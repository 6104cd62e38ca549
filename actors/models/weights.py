"""Segment-only weights: a process materialises the parameters of the units it runs and
nothing else.

The model is built on the ``meta`` device (shapes only, no memory); the tensors of the
needed units are then read by name from the checkpoint's safetensors shards
(``safe_open(...).get_tensor(name)``: only those bytes are read) and put in place. The
other units keep meta parameters, so the edge of a 70B model never materialises its
back, and a server never holds the fronts it does not run. More units can be added
later (``SplitModel.ensure_units``), e.g. when a re-plan moves the split deeper.

A model built from a config (random weights, tests and benchmarks) has no checkpoint:
its full random init (seeded) is built on CPU and only the needed tensors are kept, so
every process that loads the same config and seed holds the same weights.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn


def _owners(module: nn.Module) -> list[tuple[nn.Module, str, str]]:
    """``(owner, attribute, local name)`` of every parameter and persistent buffer in
    ``module`` (tied parameters once per owner)."""
    out = []
    for prefix, m in module.named_modules(remove_duplicate=False):
        for pn in list(m._parameters):
            if m._parameters[pn] is not None:
                out.append((m, pn, f"{prefix}.{pn}" if prefix else pn))
        for bn in list(m._buffers):
            if m._buffers[bn] is not None and bn not in m._non_persistent_buffers_set:
                out.append((m, bn, f"{prefix}.{bn}" if prefix else bn))
    return out


def _full_names(hf: nn.Module) -> dict[int, list[str]]:
    """``id(owner module) -> its qualified name(s)`` in the whole model."""
    names: dict[int, list[str]] = {}
    for n, m in hf.named_modules(remove_duplicate=False):
        names.setdefault(id(m), []).append(n)
    return names


def _set(owner: nn.Module, attr: str, t: torch.Tensor) -> None:
    if attr in owner._parameters:
        owner._parameters[attr] = t if isinstance(t, nn.Parameter) else nn.Parameter(t, requires_grad=False)
    else:
        owner._buffers[attr] = t


def _same(hf: nn.Module, a: str, b: str) -> bool:
    try:
        return hf.get_parameter(a) is hf.get_parameter(b)
    except AttributeError:
        return False


class Checkpoint:
    """Tensors of a local model folder by name (``model.safetensors`` or a sharded
    ``model.safetensors.index.json``)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        index = self.folder / "model.safetensors.index.json"
        if index.exists():
            self.weight_map = {k: self.folder / v for k, v in json.loads(index.read_text())["weight_map"].items()}
        else:
            single = self.folder / "model.safetensors"
            if not single.exists():
                raise FileNotFoundError(f"{self.folder} holds no model.safetensors or model.safetensors.index.json")
            from safetensors import safe_open

            with safe_open(str(single), "pt") as f:
                self.weight_map = {k: single for k in f.keys()}
        self._handles: dict[Path, Any] = {}

    def get(self, name: str) -> torch.Tensor | None:
        path = self.weight_map.get(name)
        if path is None:
            return None
        from safetensors import safe_open

        if path not in self._handles:
            self._handles[path] = safe_open(str(path), "pt")
        return self._handles[path].get_tensor(name)


class SegmentLoader:
    """Materialises units of a meta-initialised model (see the module docstring)."""

    def __init__(self, hf: nn.Module, *, dtype: torch.dtype, device: torch.device, checkpoint: Checkpoint | None,
                 rebuild=None):
        """``checkpoint``: where tensors come from; else ``rebuild()`` returns a fully
        initialised twin (config models) whose tensors are taken."""
        self.hf, self.dtype, self.device = hf, dtype, torch.device(device)
        self.checkpoint, self.rebuild = checkpoint, rebuild
        tied = getattr(hf, "_tied_weights_keys", None) or {}
        # only pairs this model really ties (the class lists them whatever the config's
        # tie_word_embeddings says): one tensor object on the meta model
        self.tied = {k: v for k, v in (tied.items() if isinstance(tied, dict) else []) if _same(hf, k, v)}
        self.prefix = getattr(hf, "base_model_prefix", "") or ""

    def _lookup(self, names: list[str]) -> torch.Tensor | None:
        ck = self.checkpoint
        for n in names:
            for cand in (n, self.tied.get(n), n.removeprefix(self.prefix + ".") if self.prefix else None):
                if cand:
                    t = ck.get(cand)
                    if t is not None:
                        return t
        return None

    def load(self, modules: list[nn.Module]) -> int:
        """Put real tensors into every parameter/persistent buffer of ``modules``;
        returns the bytes materialised."""
        names = _full_names(self.hf)
        twin = self.rebuild() if self.checkpoint is None else None
        twin_params = dict(twin.named_parameters(remove_duplicate=False)) if twin is not None else {}
        twin_params.update(dict(twin.named_buffers()) if twin is not None else {})
        done: dict[str, torch.Tensor] = {}  # checkpoint name -> tensor: tied owners share one
        nbytes = 0
        for mod in modules:
            mod_names = names.get(id(mod), [])
            for owner, attr, local in _owners(mod):
                cur = owner._parameters.get(attr) if attr in owner._parameters else owner._buffers.get(attr)
                if cur is not None and cur.device.type != "meta":
                    continue
                full = [f"{m}.{local}" if m else local for m in mod_names]
                key = full[0]
                if twin is not None:
                    src = next((twin_params[n] for n in full if n in twin_params), None)
                else:
                    src = self._lookup(full)
                if src is None:
                    raise KeyError(f"tensor {key!r} is not in the checkpoint at {self.checkpoint.folder}")
                if tuple(src.shape) != tuple(cur.shape):
                    raise ValueError(f"tensor {key!r} has shape {tuple(src.shape)} in the checkpoint, the model "
                                     f"expects {tuple(cur.shape)}")
                tkey = self.tied.get(key, key)
                if tkey in done:
                    t = done[tkey]
                else:
                    dt = self.dtype if src.is_floating_point() else src.dtype
                    t = src.detach().to(device=self.device, dtype=dt)
                    if attr in owner._parameters:
                        t = nn.Parameter(t, requires_grad=False)
                    done[tkey] = t
                    nbytes += t.numel() * t.element_size()
                _set(owner, attr, t)
        # non-persistent buffers (rotary inv_freq) are functions of the config, rebuilt by
        # SplitModel.ensure_units (fix_rotary): check none is left on meta
        for mod in modules:
            for _, sub in mod.named_modules():
                self._fix_nonpersistent(sub)
        return nbytes

    def fix_rotary(self, rot: nn.Module | None) -> nn.Module | None:
        """A real-device copy of a rotary-embedding module built on meta."""
        if rot is None or not any(b.device.type == "meta" for b in rot.buffers()):
            return rot
        with torch.device(self.device):  # its buffers are computed from the config at init
            return type(rot)(config=rot.config)

    def _fix_nonpersistent(self, sub: nn.Module) -> None:
        for bn in list(sub._non_persistent_buffers_set):
            b = sub._buffers.get(bn)
            if b is not None and b.device.type == "meta":
                raise RuntimeError(f"buffer {bn!r} of {type(sub).__name__} is computed at init and was left on meta")


def process_rss_bytes() -> int | None:
    """Resident memory of this process now (Linux ``/proc/self/statm``); None where it
    cannot be read."""
    try:
        import os

        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None
