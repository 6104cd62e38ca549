"""Loopback and token authentication of this process's Ray.

Loopback: ``ray.init(address="127.0.0.1:port")`` rewrites the address to the machine's
outward IP unless ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (``services.resolve_ip_for_localhost``),
so ``LocalCluster`` turns that on for its lifetime (:func:`enable_loopback`) and every
process it starts inherits it. Never for a remote ``connect``: a driver that reports
127.0.0.1 to a remote cluster cannot be called back.

Token authentication: a ``LocalCluster`` uses a random token held in this process's
environment only (never written to disk, so the user's ``~/.ray/auth_token`` is neither
read nor created). ``connect`` asks the cluster what it requires (:func:`cluster_requires_token`:
one GCS call without a token) and sets this driver's mode to match (:func:`match_auth`).
The driver's mode must match the cluster's, not merely carry a token: a driver in token
mode on a cluster without it starts actors whose calls back to the driver lack the token
("Missing authorization header", ``ActorDiedError``), which is what a stray
``~/.ray/auth_token`` used to cause. When the user's ``RAY_AUTH_MODE`` disagrees with the
cluster, one line says so and what to do.
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Mapping

from slicer.orchestrator.cluster import _ray
from slicer.orchestrator.cluster.placement import ClusterError

LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
_AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")
_PROCESS_TOKEN: str | None = None  # one per process: the token loader caches what it read

def enable_loopback() -> dict:
    """Make Ray in this process (and the processes it starts) use 127.0.0.1 for every node.
    Call before ``import ray`` when possible; when Ray is already imported the constant it
    read at import is patched too. Returns the previous state for :func:`restore_loopback`."""
    prev = {"env": os.environ.get(LOOPBACK_ENV), "const": None}
    os.environ[LOOPBACK_ENV] = "0"
    rc = _ray.ray_constants()
    if rc is not None:
        prev["const"] = rc.ENABLE_RAY_CLUSTER
        rc.ENABLE_RAY_CLUSTER = False
    return prev


def restore_loopback(prev: dict) -> None:
    if prev.get("env") is None:
        os.environ.pop(LOOPBACK_ENV, None)
    else:
        os.environ[LOOPBACK_ENV] = prev["env"]
    rc = _ray.ray_constants()
    if rc is not None and prev.get("const") is not None:
        rc.ENABLE_RAY_CLUSTER = prev["const"]


def find_token() -> str | None:
    """The auth token in Ray's order: ``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``, ``~/.ray/auth_token``."""
    tok = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if tok:
        return tok
    for p in (os.environ.get("RAY_AUTH_TOKEN_PATH"), str(Path.home() / ".ray" / "auth_token")):
        if p and os.path.isfile(p):
            tok = Path(p).read_text(encoding="utf-8").strip()
            if tok:
                return tok
    return None


def _reload_auth_config() -> None:
    _ray.reload_auth_config()


def _set_auth(mode: str) -> dict:
    """Apply an auth mode to this process's environment; returns what to restore."""
    global _PROCESS_TOKEN
    prev = {k: os.environ.get(k) for k in _AUTH_VARS}
    if mode == "inherit":
        return prev
    if mode == "disabled":
        os.environ["RAY_AUTH_MODE"] = "disabled"
    elif mode == "token":
        if not (os.environ.get("RAY_AUTH_MODE") == "token" and os.environ.get("RAY_AUTH_TOKEN")):
            _PROCESS_TOKEN = _PROCESS_TOKEN or secrets.token_hex(32)
            os.environ["RAY_AUTH_MODE"] = "token"
            os.environ["RAY_AUTH_TOKEN"] = _PROCESS_TOKEN
    else:
        raise ValueError(f"auth={mode!r}: allowed token, disabled, inherit")
    _reload_auth_config()
    return prev


def _restore_env(prev: Mapping[str, str | None]) -> None:
    for k, v in prev.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    _reload_auth_config()


def _probe_gcs(address: str, timeout_s: float) -> None:
    """Fail within ``timeout_s`` with a clear error when the GCS at HOST:PORT refuses this
    process's auth mode and token (``ray.init`` alone retries for about 20 s first).
    Called after :func:`cluster_requires_token`, which checked that it is reachable."""
    try:
        _ray.gcs_kv_keys(address, timeout_s)
    except Exception as e:  # noqa: BLE001 - re-raised with the address and the cause
        hint = (" (the token was refused: use the cluster's own token, `ray get-auth-token` on the head)"
                if _is_auth_error(e) else "")
        raise ClusterError(f"cannot use the Ray cluster at {address}: {type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else ''}{hint}") from e


def _is_auth_error(e: BaseException) -> bool:
    from ray.exceptions import AuthenticationError

    return isinstance(e, AuthenticationError) or "InvalidAuthToken" in str(e) or "authorization" in str(e).lower()


def cluster_requires_token(address: str, timeout_s: float = 10.0) -> bool:
    """Whether the GCS at HOST:PORT requires token authentication: one call made without
    a token. ClusterError when the cluster cannot be reached at all."""
    import socket

    host, _, port = address.rpartition(":")
    try:  # a plain TCP connect first: Ray's client waits ~40 s on a dead address
        socket.create_connection((host.strip("[]"), int(port)), timeout=min(timeout_s, 5.0)).close()
    except (OSError, ValueError) as e:
        raise ClusterError(f"cannot reach the Ray cluster at {address}: {type(e).__name__}: {e} "
                           f"(is it up? the address is the GCS HOST:PORT, default port 6379)") from e
    import grpc

    try:
        return _ray.gcs_requires_token(address, timeout_s)
    except grpc.RpcError as e:
        raise ClusterError(f"cannot use the Ray cluster at {address}: {e.code().name}: {e.details()}") from e


def _match_auth(target: str, timeout_s: float, notice) -> None:
    """Set this process's auth mode to what the cluster at ``target`` requires; one line
    to ``notice`` when the user's ``RAY_AUTH_MODE`` said otherwise."""
    user = (os.environ.get("RAY_AUTH_MODE") or "").lower() or None
    needs = cluster_requires_token(target, timeout_s)
    if needs:
        if user == "disabled":
            raise ClusterError(f"the Ray cluster at {target} requires token authentication but RAY_AUTH_MODE="
                               f"disabled: unset RAY_AUTH_MODE and put the cluster's token in ~/.ray/auth_token, "
                               f"RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN")
        if find_token() is None:
            raise ClusterError(f"the Ray cluster at {target} requires token authentication and no token was "
                               f"found: put the cluster's token (`ray get-auth-token` on the head) in "
                               f"~/.ray/auth_token, RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN")
        os.environ["RAY_AUTH_MODE"] = "token"
    else:
        if user == "token" and notice is not None:
            print(f"slicer: the Ray cluster at {target} runs without token authentication, so this driver "
                  f"connects without it (RAY_AUTH_MODE=token ignored; unset it to silence this line)",
                  file=notice)
        # A token file alone must not switch token mode on here (see the module docstring).
        os.environ["RAY_AUTH_MODE"] = "disabled"
    _reload_auth_config()
