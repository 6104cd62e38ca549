"""The method registry: name ↔ wire id ↔ implementation, imported lazily.

A method is an object with three functions (see ``codec/baselines.py`` for the smallest):

- ``encode(x: Tensor, cfg: CodecConfig) -> list[bytes]``: the sections of the payload
  (its own parameters included, usually in section 0). ``x`` is any shape, float dtype.
- ``decode(frame: wire.Frame) -> Tensor``: a tensor of ``frame.shape`` (any float dtype;
  the caller casts to ``frame.dtype``). Must validate every count it reads from the
  sections before using it and raise ``CodecError`` on anything wrong.
- ``predict_bytes(shape, dtype, cfg) -> int``: an upper bound of the total bytes of the
  sections ``encode`` returns for any tensor of that shape (exact when the method's rate
  does not depend on the data); the wire header is added by ``slicer.codec.predict_bytes``.

Wire ids are frozen: a later version may add ids, never reuse one.
"""
from __future__ import annotations

import importlib
from typing import Any

from slicer.codec.errors import CodecError

#: name -> (wire id, "module:attribute")
REGISTRY: dict[str, tuple[int, str]] = {
    "slicer": (1, "slicer.codec.slicer:SLICER"),
    "opsc": (2, "slicer.codec.opsc:OPSC"),
    "ecsq": (3, "slicer.codec.ecsq:ECSQ"),
    "raw": (16, "slicer.codec.baselines:RAW"),
    "fp16": (17, "slicer.codec.baselines:FP16"),
    "bf16": (18, "slicer.codec.baselines:BF16"),
    "fp16-zstd": (19, "slicer.codec.baselines:FP16_ZSTD"),
    "int8": (20, "slicer.codec.baselines:INT8"),
    "q8_0": (21, "slicer.codec.baselines:Q8_0"),
    "fp8": (22, "slicer.codec.baselines:FP8"),
}
METHOD_IDS: dict[str, int] = {name: mid for name, (mid, _) in REGISTRY.items()}
NAMES_BY_ID: dict[int, str] = {mid: name for name, mid in METHOD_IDS.items()}

_cache: dict[str, Any] = {}


def get(name: str) -> Any:
    if name not in REGISTRY:
        raise CodecError(f"unknown codec method {name!r}: allowed {', '.join(REGISTRY)}")
    if name not in _cache:
        mod, _, attr = REGISTRY[name][1].partition(":")
        _cache[name] = getattr(importlib.import_module(mod), attr)
    return _cache[name]


def get_by_id(method_id: int) -> tuple[str, Any]:
    if method_id not in NAMES_BY_ID:
        raise CodecError(f"unknown method id {method_id} in payload: known {sorted(NAMES_BY_ID)}")
    name = NAMES_BY_ID[method_id]
    return name, get(name)
