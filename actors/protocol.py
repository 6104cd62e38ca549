"""What crosses between edge, server and policy: plain records and the token format.

Everything here is plain data (no torch modules, no Ray), so the same calls work
in-process (unit tests) and through Ray actor calls (``slicer.actors.ray_actors``).

Payloads from devices are the codec's wire format (``slicer.codec.encode``: versioned,
checksummed, never pickle) for features, and ``slicer.actors.models.generate.encode_ids``
(magic, version, count, int32 ids) for cloud-only token ids; the server checks every
id is inside the vocabulary before using it.
"""
from __future__ import annotations

import time
from typing import Any

import torch

from slicer.actors.models.generate import decode_ids, encode_ids  # noqa: F401  (re-exported)
from slicer.codec import CodecError


class AdmissionError(RuntimeError):
    """The server refused a session or a step (limits, a bad payload, an unknown
    session). The message names the device, the limit or the defect."""


def now_s() -> float:
    """Wall-clock seconds (comparable across processes of one machine: per-hop
    timestamps in records use it, so the tracing view can order hops)."""
    return time.time()


def decode_tokens(payload: bytes, vocab_size: int) -> torch.Tensor:
    """Token ids ``(1, T)`` from an ``encode_ids`` payload; ``CodecError`` for a
    malformed payload, no ids, or an id outside ``[0, vocab_size)``."""
    try:
        x = decode_ids(bytes(payload))  # (1, T)
    except ValueError as e:
        raise CodecError(str(e)) from e
    if x.shape[1] < 1:
        raise CodecError("token payload holds no id")
    if bool((x < 0).any()) or bool((x >= vocab_size).any()):
        raise CodecError(f"token payload holds an id outside [0, {vocab_size})")
    return x


def plan_mode(split: int, offload_step: int | None, num_units: int) -> str:
    """The execution mode of a plan: ``cloud-only`` (split 0), ``edge-only`` (no
    offload), ``split`` (per-token split from the first step) or ``local-then-offload``."""
    if split <= 0:
        return "cloud-only"
    if offload_step is None or split >= num_units:
        return "edge-only"
    return "split" if offload_step <= 1 else "local-then-offload"


#: Our mode names -> ``slicer.actors.models.generate.EdgeSession`` mode names.
SESSION_MODES = {"split": "per-token", "local-then-offload": "offload", "edge-only": "edge-only",
                 "cloud-only": "cloud-only"}


def hop_record(**kw: Any) -> dict[str, Any]:
    """One step's per-hop timings (seconds; ``*_t`` are wall-clock timestamps). Keys:
    ``step, kind, tokens, edge_compute_s, encode_s, payload_bytes, elements,
    bits_per_element, send_t, server_recv_t, queue_s, decode_s, server_compute_s,
    batch_size, server_done_t, recv_t, transfer_emulated_s``. The tracing view turns
    them into spans (edge compute, encode, transfer, server queue, decode, server
    compute, return)."""
    return {k: (round(v, 9) if isinstance(v, float) else v) for k, v in kw.items()}
