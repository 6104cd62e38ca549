"""Pure planning functions: link model, device profiles, latency/memory models, split
selection, the three-tier SLICER-SEARCH, OPSC joint optimisation and baseline policies.

Nothing here imports Ray; everything is a function of snapshots::

    from slicer.policies import plan, Budgets, LinkState, get_device
    p = plan("slicer", model_profile, get_device("jetson-orin-agx"),
             LinkState.from_mbps(20), Budgets(latency_s=0.2, memory_bytes=8e9))
    p.split, p.offload_step, p.codec_spec, p.reason
"""
import importlib

# Names resolve lazily (PEP 562): ``from slicer.policies.link import LinkState`` must not
# import torch (the workload validator uses the link defaults and refuses a bad file in
# well under a second and a few MiB), and ``from slicer.policies import plan`` loads only
# what plan needs.
_WHERE = {
    "AccuracyTable": "accuracy", "accuracy_of": "accuracy", "prior_accuracy": "accuracy",
    "POLICIES": "api", "PolicyState": "api", "plan": "api", "policy_names": "api", "reassess": "api",
    "cloud_only_plan": "baselines", "edge_only_plan": "baselines", "fixed_split_plan": "baselines",
    "neurosurgeon_plan": "baselines",
    "DeviceProfile": "devices", "MeasuredTimings": "devices", "get_device": "devices",
    "load_device_catalog": "devices",
    "LinkState": "link", "comm_latency_s": "link", "db_to_linear": "link", "outage_probability": "link",
    "transmissions": "link",
    "CostModel": "models", "Estimate": "models",
    "opsc_plan": "opsc",
    "LayerProfile": "profile", "ModelProfile": "profile",
    "PRECISION_BYTES": "schema", "Budgets": "schema", "SplitPlan": "schema", "canonical_precision": "schema",
    "SearchSpace": "search", "slicer_plan": "search",
}


def __getattr__(name: str):
    mod = _WHERE.get(name)
    if mod is None:
        raise AttributeError(f"module 'slicer.policies' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"slicer.policies.{mod}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_WHERE))


__all__ = sorted(_WHERE)
