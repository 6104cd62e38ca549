"""Checks of a workload against its model, before any actor starts.

``slicer.orchestrator.workload`` validates every field on its own (types, ranges, names); what
needs the model (its units, context length, KV size) is checked here, once the model's
profile is known, so a run fails in milliseconds with the field named instead of in an
actor's constructor or on the server mid-run:

- ``policy.split`` (fixed policy) must lie in ``1..num_units - 1``;
- the longest prompt plus ``max_new_tokens`` must fit the model's context
  (``max_position_embeddings``) and the server's per-session limit;
- one session of the longest request must fit ``server.max_kv_mib`` (else every request
  would be refused), and so must one session per device at once as the server admits them
  (their KV plus the worst batched step's memory); ``server.max_sessions`` must
  hold one session per device (each device keeps one request in flight).
"""
from __future__ import annotations

from typing import Any

from slicer.orchestrator.workload import Workload, WorkloadError
from slicer.orchestrator.yamlload import short


def model_max_positions(model_ref: Any) -> int | None:
    """The model's ``max_position_embeddings``, from a config already read
    (``model_config``) or from a name or folder; None when unknown (the check is
    skipped, the run decides)."""
    from transformers import PretrainedConfig

    cfg = model_ref if isinstance(model_ref, PretrainedConfig) else model_config(model_ref)
    return int(getattr(cfg, "max_position_embeddings", 0) or 0) or None


def request_kv_bytes(wl: Workload, profile: Any, longest_prompt_tokens: int) -> int:
    """The most KV-cache bytes one request of ``wl`` can hold on the server: its longest
    context at split 0 (cloud-only keeps every layer's cache there)."""
    return int(profile.kv_bytes_per_token(0, int(profile.num_layers))) * (int(longest_prompt_tokens) + int(wl.max_new_tokens))


def model_config(model_ref: Any) -> Any:
    """The model's Hugging Face config (no weights), or None when unreadable."""
    try:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(str(model_ref))
    except Exception:  # noqa: BLE001 (no readable config: the checks needing it are skipped)
        return None


def all_sessions_bytes(wl: Workload, profile: Any, hf_config: Any, longest_prompt_tokens: int) -> tuple[int, int]:
    """(KV, step) bytes the server needs to hold one session per device at once, as its
    admission counts them (``slicer.actors.server.Server.open_session``: every device keeps
    a request in flight, and a refused session fails its request): one request's KV per
    device and the worst batched step those sessions could form (``max_batch`` of them,
    each a whole-context prefill, at the server's dtype; 4 bytes per element when unset,
    an upper bound for a CUDA server in the checkpoint's dtype)."""
    n_dev = sum(g.count for g in wl.devices)
    kv = request_kv_bytes(wl, profile, longest_prompt_tokens) * n_dev
    if hf_config is None or profile.kind != "causal_lm":
        return kv, 0
    from slicer.actors.models.generate import step_peak_bytes_of_config, worst_batch
    from slicer.policies.schema import PRECISION_BYTES

    elem = int(PRECISION_BYTES[wl.server.dtype or "float32"])
    ctx = int(longest_prompt_tokens) + int(wl.max_new_tokens)
    return kv, step_peak_bytes_of_config(hf_config, elem, worst_batch([ctx] * n_dev, wl.server.max_batch,
                                                                     wl.server.batching))


def check_against_model(wl: Workload, profile: Any, longest_prompt_tokens: int, *, max_positions: int | None = None,
                        hf_config: Any = None) -> None:
    """Raise ``WorkloadError`` naming the field when the workload cannot run on the model
    described by ``profile`` (``slicer.policies.profile.ModelProfile``: its split units are
    ``profile.layers``) with ``max_positions`` tokens of context (None: unknown) and the
    server of ``wl.server``. ``hf_config``: the model's config, for the batched step's
    memory (None: not checked)."""
    max_tokens_per_session = wl.server.max_tokens_per_session
    n = int(profile.num_layers)
    if wl.policy.split is not None and not 1 <= wl.policy.split <= n - 1:
        raise WorkloadError(f"workload field policy.split={wl.policy.split} is invalid for model {short(wl.model)}: "
                            f"allowed 1..{n - 1} (the model has {n} units; for none on the edge or all of them "
                            "use policy cloud-only or edge-only)")
    ctx = int(longest_prompt_tokens) + int(wl.max_new_tokens)
    max_pos = int(max_positions or 0)
    if max_pos and ctx > max_pos:
        raise WorkloadError(f"workload field max_new_tokens={wl.max_new_tokens}: with the longest prompt "
                            f"({longest_prompt_tokens} tokens) a request reaches {ctx} tokens, more than the model's "
                            f"max_position_embeddings={max_pos}; allowed max_new_tokens <= {max_pos - longest_prompt_tokens}")
    if ctx > max_tokens_per_session:
        raise WorkloadError(f"workload field max_new_tokens={wl.max_new_tokens}: a request reaches {ctx} tokens, more "
                            f"than the server's per-session limit of {max_tokens_per_session}")
    # Worst case: cloud-only (split 0) holds the KV cache of every layer on the server.
    kv = request_kv_bytes(wl, profile, longest_prompt_tokens)
    if kv > wl.server.max_kv_bytes:
        raise WorkloadError(f"workload field server.max_kv_mib={wl.server.max_kv_mib:g} cannot hold one request: its KV "
                            f"cache needs up to {kv} bytes ({kv / 2**20:.3f} MiB, {ctx} tokens at split 0)")
    if kv > wl.server.max_kv_bytes_per_device:
        raise WorkloadError(f"workload field server.max_kv_mib_per_device={wl.server.max_kv_mib_per_device:g} cannot hold "
                            f"one request: its KV cache needs up to {kv} bytes ({kv / 2**20:.3f} MiB)")
    n_dev = sum(g.count for g in wl.devices)
    kv_all, step = all_sessions_bytes(wl, profile, hf_config, longest_prompt_tokens)
    if kv_all + step > wl.server.max_kv_bytes:
        raise WorkloadError(
            f"workload field server.max_kv_mib={wl.server.max_kv_mib:g} cannot hold one session per device at once: "
            f"one request's KV for each of the {n_dev} devices "
            f"({kv_all / 2**20:.3f} MiB) and the worst batched step they could form ({step / 2**20:.3f} MiB); "
            f"allowed server.max_kv_mib >= {(kv_all + step) / 2**20:.3f} (or fewer devices, a smaller "
            "server.max_batch or max_new_tokens)")
    if wl.server.max_sessions < n_dev:
        raise WorkloadError(f"workload field server.max_sessions={wl.server.max_sessions} is fewer than the {n_dev} "
                            "devices, each of which keeps one request (session) open: allowed >= the device count")
