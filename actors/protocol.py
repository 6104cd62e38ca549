"""What crosses between edge, server and policy: plain records and two tiny formats.

Everything here is plain data (no torch modules, no Ray), so the same calls work
in-process (unit tests) and through Ray actor calls (``actors.ray_actors``).

Payloads from devices are the codec's wire format (``codec.encode``: versioned,
checksummed, never pickle). Token ids (cloud-only inputs) travel in the same format as a
float32 ``(1, T)`` tensor with the lossless ``raw`` method: 4 bytes per token plus the
header, ids up to 2**24 exactly representable, and the server checks each is an integer
inside the vocabulary before using it.
"""
from __future__ import annotations

import time
from typing import Any

import torch

from codec import CodecConfig, CodecError, decode, encode

#: float32 represents every integer below 2**24 exactly.
MAX_TOKEN_ID = 1 << 24
_RAW = CodecConfig(method="raw")


class AdmissionError(RuntimeError):
    """The server refused a session or a step (limits, a bad payload, an unknown
    session). The message names the device, the limit or the defect."""


def now_s() -> float:
    """Wall-clock seconds (comparable across processes of one machine: per-hop
    timestamps in records use it, so the tracing view can order hops)."""
    return time.time()


def encode_tokens(ids: torch.Tensor) -> bytes:
    """Token ids ``(1, T)`` (int) as a payload."""
    if ids.dim() != 2 or ids.shape[0] != 1:
        raise ValueError(f"token ids must be (1, T), got {tuple(ids.shape)}")
    return encode(ids.to(torch.float32), _RAW)  # (1, T) float32


def decode_tokens(payload: bytes, vocab_size: int) -> torch.Tensor:
    """The inverse of ``encode_tokens``; raises ``CodecError`` on any bad payload
    (not a (1, T) tensor, a non-integer id, an id outside ``[0, vocab_size)``)."""
    x = decode(payload)
    if x.dim() != 2 or x.shape[0] != 1 or x.shape[1] < 1:
        raise CodecError(f"token payload has shape {tuple(x.shape)}: expected (1, T) with T >= 1")
    if not bool(torch.isfinite(x).all()) or not bool((x == x.round()).all()):
        raise CodecError("token payload holds a non-integer id")
    if bool((x < 0).any()) or bool((x >= min(vocab_size, MAX_TOKEN_ID)).any()):
        raise CodecError(f"token payload holds an id outside [0, {vocab_size})")
    return x.to(torch.long)  # (1, T)


def plan_mode(split: int, offload_step: int | None, num_units: int) -> str:
    """The execution mode of a plan: ``cloud-only`` (split 0), ``edge-only`` (no
    offload), ``split`` (per-token split from the first step) or ``local-then-offload``."""
    if split <= 0:
        return "cloud-only"
    if offload_step is None or split >= num_units:
        return "edge-only"
    return "split" if offload_step <= 1 else "local-then-offload"


def hop_record(**kw: Any) -> dict[str, Any]:
    """One step's per-hop timings (seconds; ``*_t`` are wall-clock timestamps). Keys:
    ``step, kind, tokens, edge_compute_s, encode_s, payload_bytes, elements,
    bits_per_element, send_t, server_recv_t, queue_s, decode_s, server_compute_s,
    batch_size, server_done_t, recv_t, transfer_emulated_s``. The tracing view turns
    them into spans (edge compute, encode, transfer, server queue, decode, server
    compute, return)."""
    return {k: (round(v, 9) if isinstance(v, float) else v) for k, v in kw.items()}
