"""Ray's private APIs, quarantined: every ``ray._private`` / ``ray._raylet`` /
``ray._common`` / ``ray.core.generated`` use of the cluster package goes through this
file, so a Ray upgrade that moves one breaks here, in one place, with one test run
(``tests/orchestrator/test_cluster_*``). Checked against Ray 2.60."""
from __future__ import annotations

import sys


def validate_label_selector(selector: dict) -> str | None:
    """Ray's own syntax check of a label selector: an error message, or None."""
    from ray._private.label_utils import validate_label_selector as check

    return check(dict(selector))


def ray_constants():
    """``ray._private.ray_constants`` if Ray is imported already (its
    ``ENABLE_RAY_CLUSTER`` is read once, at import), else None."""
    return sys.modules.get("ray._private.ray_constants")


def reload_auth_config() -> None:
    """Make Ray see the auth environment just set: it caches the mode in RayConfig and the
    token in a C++ loader (this is what Ray's own ``_enable_token_auth`` does)."""
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def default_temp_dir() -> str:
    from ray._common.utils import get_default_ray_temp_dir

    return get_default_ray_temp_dir()


def write_ray_address(address: str, temp_dir: str) -> None:
    """The address file Ray Jobs read for ``auto`` in a node's temp dir."""
    from ray._private.utils import write_ray_address as write

    write(address, temp_dir)


def read_ray_address() -> str | None:
    """The address of the last cluster started on this machine (Ray's address file)."""
    from ray._private.utils import read_ray_address as read

    return read()


def ray_address_file() -> str:
    from ray._common.utils import get_ray_address_file

    return get_ray_address_file(None)


def gcs_kv_keys(address: str, timeout_s: float) -> None:
    """One authenticated GCS call with this process's auth mode and token."""
    from ray._raylet import GcsClient

    GcsClient(address=address).internal_kv_keys(b"", None, timeout=timeout_s)


def gcs_requires_token(address: str, timeout_s: float) -> bool:
    """One bare gRPC call to the GCS (Ray's generated stub, no metadata, so no C++ warning
    line): True when it is refused as unauthenticated. ``grpc.RpcError`` otherwise."""
    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    with grpc.insecure_channel(address) as ch:
        try:
            gcs_service_pb2_grpc.NodeInfoGcsServiceStub(ch).GetClusterId(
                gcs_service_pb2.GetClusterIdRequest(), timeout=timeout_s)
            return False
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.UNAUTHENTICATED:
                return True
            raise


def keep_loopback_in_ray_start() -> None:
    """For a ``ray start`` CLI process only: do not rewrite 127.0.0.1 to the outward IP,
    and let worker starts through although RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 is set for
    the daemons it starts (which keeps their own ``ray.init`` calls on 127.0.0.1)."""
    import ray._private.ray_constants as constants
    import ray._private.services as services

    def keep_host(host: str) -> str:
        if not host:
            raise ValueError(f"Malformed host: {host}")
        return host

    services.resolve_ip_for_localhost = keep_host
    services.get_node_ip_address = lambda address=None: "127.0.0.1"
    constants.ENABLE_RAY_CLUSTER = True
