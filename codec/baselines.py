"""Baseline codecs for comparison, same API and wire format as the rest.

``raw`` is the lossless reference (the tensor's own bytes).
"""
from __future__ import annotations

import math

import torch

from codec.config import CodecConfig
from codec.errors import CodecError
from codec.wire import Frame


def _as_bytes(x: torch.Tensor) -> bytes:
    x = x.detach().contiguous().cpu()
    if x.dtype == torch.bfloat16:
        return x.view(torch.int16).numpy().tobytes()
    return x.numpy().tobytes()


def _from_bytes(buf: memoryview, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    itemsize = torch.empty(0, dtype=dtype).element_size()
    need = math.prod(shape) * itemsize
    if len(buf) != need:
        raise CodecError(f"data section holds {len(buf)} bytes, shape {shape} of {dtype} needs {need}")
    if dtype == torch.bfloat16:
        return torch.frombuffer(bytearray(buf), dtype=torch.int16).view(torch.bfloat16).reshape(shape)
    return torch.frombuffer(bytearray(buf), dtype=dtype).reshape(shape)


class _Raw:
    """Lossless: the tensor's own bytes in its own dtype."""

    def encode(self, x: torch.Tensor, cfg: CodecConfig) -> list[bytes]:
        return [_as_bytes(x)]

    def decode(self, frame: Frame) -> torch.Tensor:
        if len(frame.sections) != 1:
            raise CodecError(f"raw payload has {len(frame.sections)} sections, expected 1")
        return _from_bytes(frame.sections[0], frame.dtype, frame.shape)

    def predict_bytes(self, shape, dtype, cfg) -> int:
        return math.prod(shape) * torch.empty(0, dtype=dtype).element_size()

    def max_sections(self, cfg) -> int:
        return 1


RAW = _Raw()
