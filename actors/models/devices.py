"""Where a side computes and in which dtype: the workload's ``device``/``dtype`` resolved on
the node that runs it (``server: {device: auto|cpu|cuda, dtype: float32|bfloat16|float16}``
and the same per device group)."""
from __future__ import annotations

import torch

from slicer.actors.server_config import DEVICES  # the names the workload allows
from slicer.actors.server_config import DTYPES as _DTYPE_NAMES

DTYPES = {name: getattr(torch, name) for name in _DTYPE_NAMES}


class DeviceUnavailableError(ValueError):
    """A workload asks for an accelerator its node does not have."""


def resolve_device(device: str, field: str = "device") -> str:
    """``cpu`` or ``cuda`` for this process: ``auto`` picks CUDA where it is available;
    ``cuda`` without CUDA raises ``DeviceUnavailableError`` naming ``field``."""
    if device not in DEVICES:
        raise ValueError(f"{field}={device!r} is invalid: allowed {', '.join(DEVICES)}")
    has = torch.cuda.is_available()
    if device == "cuda" and not has:
        raise DeviceUnavailableError(f"{field}='cuda' but this node has no CUDA device (torch.cuda.is_available() is "
                                     f"False): use device: cpu or auto")
    return "cuda" if device == "cuda" or (device == "auto" and has) else "cpu"


def resolve_dtype(dtype: str | None, device: str) -> torch.dtype | None:
    """The torch dtype of ``dtype``; None means float32 on CPU and the checkpoint's own
    dtype on CUDA (``load_model(dtype=None)``)."""
    if dtype is None:
        return torch.float32 if device == "cpu" else None
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is invalid: allowed {', '.join(DTYPES)}")
    return DTYPES[dtype]
