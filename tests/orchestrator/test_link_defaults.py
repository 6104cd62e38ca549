"""A workload that gives only a link's rate plans exactly as `slicer plan` does for the same
figures: one set of link defaults (the paper's W = 10 MHz, γ = 10 dB, ε = 0.001)."""
from __future__ import annotations

import argparse
import math

import pytest

from slicer.actors.policy_actor import Policy, _budgets_of, _Device
from slicer.actors.protocol import BudgetSpec, DeviceInfo, Request
from slicer.orchestrator.commands import plan as plan_cmd
from slicer.orchestrator.runner import policy_config
from slicer.orchestrator.workload import parse_workload
from slicer.policies import LinkState, plan
from slicer.policies.devices import get_device

WL = {"name": "rate-only", "model": "m", "inputs": {"prompts": [[1, 2, 3, 4]]}, "max_new_tokens": 8,
      "devices": [{"class": "jetson-orin-agx", "count": 1, "link": {"rate_mbps": 20},
                   "budgets": {"latency_ms": 60}}]}


def _cli_link(rate_mbps: float) -> LinkState:
    p = argparse.ArgumentParser()
    plan_cmd.add_arguments(p)
    a = p.parse_args(["--model", "x", "--device", "jetson-orin-agx", "--rate-mbps", str(rate_mbps), "--latency-ms", "60"])
    return LinkState.from_mbps(a.rate_mbps, snr_db=a.snr_db, bandwidth_mhz=a.bandwidth_mhz, epsilon=a.epsilon)


@pytest.mark.parametrize("rate", [0.5, 20.0, 200.0])
def test_workload_link_is_the_plan_commands_link(rate):
    wl = parse_workload({**WL, "devices": [{**WL["devices"][0], "link": {"rate_mbps": rate}}]})
    ls = wl.devices[0].link.state()
    assert ls == _cli_link(rate)
    assert (ls.epsilon, ls.bandwidth_hz) == (1e-3, 10e6) and math.isclose(ls.snr, 10.0)
    assert math.isclose(ls.capacity_bps, 10e6 * math.log2(11.0))  # ≈ 34.6 Mbit/s, not 133


def test_workload_plans_exactly_as_slicer_plan():
    profile = plan_cmd.load_model_profile("llama-3.2-3b")
    wl = parse_workload(WL)
    dev_id, g = wl.all_devices()[0]
    cfg = policy_config(wl, {dev_id: [Request(f"{dev_id}/r0", 0, (1, 2, 3, 4), 8)]})
    assert (cfg.name, cfg.new_tokens, cfg.prompt_tokens) == ("slicer", 8, 4)
    pol = Policy(cfg, profile)
    got = pol.register(dev_id, DeviceInfo(g.device_class, link=g.link, budgets=g.budgets)).to_dict()
    device = get_device("jetson-orin-agx")
    budgets = _budgets_of(cfg, device, _Device(dev_id, g.device_class, g.link, BudgetSpec(latency_ms=60), None))
    want = plan("slicer", profile, device, _cli_link(20.0), budgets).to_dict()
    assert got.pop("device") == dev_id and want.pop("device") == "jetson-orin-agx"  # the policy names the device id
    assert got == want
    assert want["feasible"] and want["split"] > 0
    rec = pol.decisions()[-1]["link"]
    assert (rec["epsilon"], rec["bandwidth_hz"], rec["snr_db"]) == (1e-3, 10e6, 10.0)
