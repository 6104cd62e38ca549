"""Triton GPU kernels of the codec. Imported lazily: importing ``codec`` never needs Triton.

Every kernel has a reference in ``codec/reference/`` and is tested against it byte for
byte (``rtol=0, atol=0``) on odd shapes, on CPU under ``TRITON_INTERPRET=1`` and on CUDA
where a GPU is present.
"""
from __future__ import annotations

import importlib.util
import os


def available(device_type: str = "cuda") -> bool:
    """True when Triton can run on a tensor of this device type: a CUDA tensor on a CUDA
    machine, or any tensor under the interpreter (``TRITON_INTERPRET=1``)."""
    if importlib.util.find_spec("triton") is None:
        return False
    if os.environ.get("TRITON_INTERPRET") == "1":
        return True
    import torch

    return device_type == "cuda" and torch.cuda.is_available()
