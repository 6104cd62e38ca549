"""Pure planning functions: link model, device profiles, latency/memory models, split
selection, the three-tier SLICER-SEARCH, OPSC joint optimisation and baseline policies.

Nothing here imports Ray; everything is a function of snapshots::

    from slicer.policies import plan, Budgets, LinkState, get_device
    p = plan("slicer", model_profile, get_device("jetson-orin-agx"),
             LinkState.from_mbps(20), Budgets(latency_s=0.2, memory_bytes=8e9))
    p.split, p.offload_step, p.codec_spec, p.reason
"""
from slicer.policies.accuracy import AccuracyTable, accuracy_of, prior_accuracy
from slicer.policies.api import POLICIES, PolicyState, plan, policy_names, reassess
from slicer.policies.baselines import (
    cloud_only_plan,
    edge_only_plan,
    fixed_split_plan,
    neurosurgeon_plan,
)
from slicer.policies.devices import (
    DeviceProfile,
    MeasuredTimings,
    get_device,
    load_device_catalog,
)
from slicer.policies.link import (
    LinkState,
    comm_latency_s,
    db_to_linear,
    outage_probability,
    transmissions,
)
from slicer.policies.models import CostModel, Estimate
from slicer.policies.opsc import opsc_plan
from slicer.policies.profile import LayerProfile, ModelProfile
from slicer.policies.schema import PRECISION_BYTES, Budgets, SplitPlan, canonical_precision
from slicer.policies.search import SearchSpace, slicer_plan

__all__ = [
    "POLICIES",
    "PRECISION_BYTES",
    "AccuracyTable",
    "Budgets",
    "CostModel",
    "DeviceProfile",
    "Estimate",
    "LayerProfile",
    "LinkState",
    "MeasuredTimings",
    "ModelProfile",
    "PolicyState",
    "SearchSpace",
    "SplitPlan",
    "accuracy_of",
    "canonical_precision",
    "cloud_only_plan",
    "comm_latency_s",
    "db_to_linear",
    "edge_only_plan",
    "fixed_split_plan",
    "get_device",
    "load_device_catalog",
    "neurosurgeon_plan",
    "opsc_plan",
    "outage_probability",
    "plan",
    "policy_names",
    "prior_accuracy",
    "reassess",
    "slicer_plan",
    "transmissions",
]
