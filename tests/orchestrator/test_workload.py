"""Workload YAML -> dataclasses: validation names the field, the value and what is allowed."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest

from slicer.codec import CodecConfig
from slicer.orchestrator.workload import WorkloadError, load_prompts, load_workload, parse_workload

REPO = Path(__file__).resolve().parents[2]
BASE = {
    "name": "t", "model": "m", "inputs": {"prompts": ["hello", [1, 2, 3]]},
    "devices": [{"class": "raspberry-pi-5", "count": 2, "link": {"rate_mbps": 20},
                 "link_schedule": [{"at_request": 3, "rate_mbps": 2}]},
                {"class": "jetson-orin-nano"}],
}


def _with(path: str, value):
    d = copy.deepcopy(BASE)
    keys = path.split(".")
    cur = d
    for k in keys[:-1]:
        cur = cur[int(k)] if k.isdigit() else cur.setdefault(k, {})
    cur[keys[-1]] = value
    return d


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
