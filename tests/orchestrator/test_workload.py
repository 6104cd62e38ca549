"""Workload YAML -> dataclasses: validation names the field, the value and what is allowed."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest

from slicer.codec import CodecConfig
from slicer.orchestrator.workload import (
    WorkloadError,
    load_prompts,
    load_workload,
    parse_workload,
)
from tests.orchestrator.conftest import with_field

REPO = Path(__file__).resolve().parents[2]
BASE = {
    "name": "t", "model": "m", "inputs": {"prompts": ["hello", [1, 2, 3]]},
    "devices": [{"class": "raspberry-pi-5", "count": 2, "link": {"rate_mbps": 20},
                 "link_schedule": [{"at_request": 3, "rate_mbps": 2}]},
                {"class": "jetson-orin-nano"}],
}


def _with(path: str, value):
    return with_field(BASE, path, value)


def test_parses_defaults_and_ids():
    wl = parse_workload(BASE)
    assert [d for d, _ in wl.all_devices()] == ["raspberry-pi-5-0", "raspberry-pi-5-1", "jetson-orin-nano-0"]
    g = wl.devices[0]
    assert g.link.rate_mbps == 20.0 and g.link.snr_db == 10.0  # the paper's default, as `slicer plan`
    assert g.link_schedule[0].apply(g.link).rate_mbps == 2.0
    assert wl.policy.name == "slicer" and wl.codec is None and wl.mode == "auto"
    assert wl.inputs.prompts == ("hello", (1, 2, 3))


@pytest.mark.parametrize("path,value,needle", [
    ("devices.0.count", 0, "devices[0].count=0"),
    ("devices.0.count", 1.5, "devices[0].count=1.5"),
    ("devices.1.link.rate_mbps", -1, "devices[1].link.rate_mbps=-1"),
    ("devices.0.link.epsilon", 1.0, "a number in (0, 1)"),
    ("devices.0.emulation", {"slowdown": 0.5}, "devices[0].emulation.slowdown=0.5"),
    ("devices.0.budgets", {"latency_ms": "fast"}, "devices[0].budgets.latency_ms='fast'"),
    ("devices.0.link_schedule", [{"rate_mbps": 2}], "link_schedule[0].at_request is missing"),
    ("devices.0.link_schedule", [{"at_request": 1}], "changes nothing"),
    ("policy", "greedy", "one of slicer, cloud-only"),
    ("policy", {"name": "fixed"}, "policy.split is missing"),
    ("codec", "slicer:sparsity=2", "workload field codec="),
    ("codec", {"method": "zip"}, "CodecConfig.method='zip'"),
    ("mode", "turbo", "mode='turbo'"),
    ("precision", "int3", "precision='int3'"),
    ("max_new_tokens", 0, "max_new_tokens=0"),
    ("server.max_batch", 0, "server.max_batch=0"),
    ("server.batching", "yes", "server.batching='yes'"),
    ("inputs.prompts", [""], "inputs.prompts[0]"),
    ("inputs.prompts", [[1, -2]], "inputs.prompts[0]"),
])
def test_bad_values_name_the_field(path, value, needle):
    with pytest.raises(WorkloadError) as e:
        parse_workload(_with(path, value))
    assert needle in str(e.value)
    assert "allowed" in str(e.value) or "missing" in str(e.value) or "changes nothing" in str(e.value) or "invalid" in str(e.value)


@pytest.mark.parametrize("path,name", [
    ("devices.0.linkk", "devices[0].linkk"), ("server.max_batchh", "server.max_batchh"),
    ("colour", ".colour"), ("devices.0.link.rate", "devices[0].link.rate"),
])
def test_unknown_fields_rejected(path, name):
    with pytest.raises(WorkloadError, match="is unknown") as e:
        parse_workload(_with(path, 1))
    assert name in str(e.value)


def test_missing_and_duplicates():
    d = copy.deepcopy(BASE)
    del d["devices"]
    with pytest.raises(WorkloadError, match="devices is missing"):
        parse_workload(d)
    with pytest.raises(WorkloadError, match="duplicate device ids"):
        parse_workload(_with("devices", [{"class": "a"}, {"class": "a"}]))
    parse_workload(_with("devices", [{"class": "a"}, {"class": "a", "name": "a2"}]))
    with pytest.raises(WorkloadError, match="inputs is empty"):
        parse_workload(_with("inputs", {}))


def test_codec_forms():
    assert parse_workload(_with("codec", "lossless")).codec == CodecConfig(method="raw")
    assert parse_workload(_with("codec", {"method": "slicer", "sparsity": 0.5})).codec.sparsity == 0.5
    assert parse_workload(_with("codec", "auto")).codec is None
    assert parse_workload(_with("policy", {"name": "fixed", "split": 2})).policy.split == 2


def test_task_file_and_examples(tmp_path):
    (tmp_path / "t.jsonl").write_text('{"prompt": "a", "answer": "b"}\n\n{"prompt": "c"}\n')
    (tmp_path / "w.yaml").write_text("model: m\ninputs: {task_file: t.jsonl}\ndevices: [{class: x}]\n")
    wl = load_workload(tmp_path / "w.yaml")
    assert [r["prompt"] for r in load_prompts(wl)] == ["a", "c"]
    (tmp_path / "bad.yaml").write_text("model: m\ninputs: {task_file: nope.jsonl}\ndevices: [{class: x}]\n")
    with pytest.raises(WorkloadError, match="inputs.task_file='nope.jsonl'"):
        load_workload(tmp_path / "bad.yaml")
    for f in ("quickstart", "multi_client", "cloud_only", "lossless_split"):
        wl = load_workload(REPO / "examples" / f"{f}.yaml")
        assert wl.devices and load_prompts(wl)


@pytest.mark.parametrize("path,value,needle", [
    ("policy", {"name": "fixed", "split": True}, "policy.split=True is invalid: allowed an integer"),
    ("requests", True, "requests=True"),
    ("server.max_batch", False, "server.max_batch=False"),
    ("server.max_kv_mib", float("inf"), "server.max_kv_mib=inf is invalid: allowed a finite number"),
    ("server.max_kv_mib", float("nan"), "server.max_kv_mib=nan"),
    ("server.max_kv_mib", 1e300, "server.max_kv_mib=1e+300 is invalid: allowed a finite number > 0 and <= 1048576"),
    ("devices.0.link.rate_mbps", float("inf"), "devices[0].link.rate_mbps=inf"),
    ("devices.0.link.epsilon", float("nan"), "devices[0].link.epsilon=nan"),
    ("devices.0.budgets", {"latency_ms": float("-inf")}, "devices[0].budgets.latency_ms=-inf"),
    ("devices.0.count", 10**400, "devices[0].count=<an integer of 1329 bits>"),
    ("seed", 2.5, "seed=2.5 is invalid: allowed an integer"),
    ("server.session_ttl_s", 0, "server.session_ttl_s=0 is invalid: allowed a finite number > 0 and <= 86400"),
    ("server.open_rate_per_s", float("inf"), "server.open_rate_per_s=inf"),
    ("server.open_burst", 0, "server.open_burst=0 is invalid: allowed an integer >= 1 and <= 100000"),
    ("mode", "x" * 10000, "mode='xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'...(10000 chars)"),
    ("inputs.prompts", [[1, True]], "inputs.prompts[0]=<a list of 2 items> is invalid"),
])
def test_numbers_are_strict_and_values_quoted_short(path, value, needle):
    with pytest.raises(WorkloadError) as e:
        parse_workload(_with(path, value))
    assert needle in str(e.value)
    assert len(str(e.value)) < 400


def test_every_error_of_a_workload_is_reported_together():
    d = _with("mode", "turbo")
    d["server"] = {"max_batch": 0, "max_kv_mib": float("nan"), "bogus": 1}
    d["devices"][0]["count"] = True
    d["devices"][1]["link"] = {"rate_mbps": -1, "colour": "red"}
    d["colour"] = 1
    with pytest.raises(WorkloadError) as e:
        parse_workload(d)
    errs = e.value.errors
    expected = ["mode='turbo'", "server.max_batch=0", "server.max_kv_mib=nan", "server.bogus is unknown",
                "devices[0].count=True", "devices[1].link.rate_mbps=-1", "devices[1].link.colour is unknown",
                "field .colour is unknown"]
    assert len(errs) == len(expected), errs
    for needle in expected:
        assert sum(needle in x for x in errs) == 1, (needle, errs)
    assert str(e.value).startswith(f"{len(expected)} errors:")


def test_server_session_limits_reach_the_server():
    from slicer.orchestrator.runner import make_identities, server_config

    wl = parse_workload(_with("server", {"session_ttl_s": 12.5, "open_rate_per_s": 3, "open_burst": 7}))
    cfg = server_config(wl)
    assert (cfg.session_ttl_s, cfg.open_rate_per_s, cfg.open_burst) == (12.5, 3.0, 7)
    ids = make_identities(wl)
    assert sorted(ids) == sorted(d for d, _ in wl.all_devices())
    assert len(set(ids.values())) == len(ids) and all(len(c) >= 40 for c in ids.values())  # 32 random bytes each
    assert make_identities(wl) != ids  # fresh per run
