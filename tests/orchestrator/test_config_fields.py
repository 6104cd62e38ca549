"""One source for every config default and bound (``slicer.actors.fields``): the workload's
sections parse straight into the dataclasses the run uses, their checks and the
``slicer run`` flags come from the fields' declarations."""
from __future__ import annotations

import dataclasses
import json
import sys

import pytest

from slicer.actors import fields as F
from slicer.actors.policy_actor import PolicyConfig
from slicer.actors.protocol import BudgetSpec, EmulationSpec, LinkChange, LinkSpec
from slicer.actors.server_config import ServerConfig
from slicer.orchestrator.cli import build_parser, main
from slicer.orchestrator.commands.run import with_overrides
from slicer.orchestrator.workload import (
    DeviceGroup,
    Workload,
    WorkloadError,
    parse_workload,
)
from tests.orchestrator.conftest import with_field

BASE = {"name": "t", "model": "m", "inputs": {"prompts": [[1, 2, 3]]},
        "devices": [{"class": "raspberry-pi-5", "count": 2}]}
SECTIONS = {"server": ServerConfig, "policy": PolicyConfig, "devices.0.link": LinkSpec,
            "devices.0.budgets": BudgetSpec, "devices.0.emulation": EmulationSpec}


def _with(path: str, value):
    return with_field(BASE, path, value)


def _out_of_range(spec: F.Spec) -> list:
    """Values a field's declaration refuses: one past each bound, a bool, NaN."""
    bad: list = [True, float("nan")]
    if spec.lo is not None:
        bad.append(spec.lo if spec.lo_open else spec.lo - (1 if spec.integer else 1e-6))
    bad.append(spec.hi if spec.hi is not None and spec.hi_open else (spec.hi if spec.hi is not None else F.MAX_NUMBER) * 2)
    if spec.integer:
        bad.append((spec.lo or 0) + 1.5)
    return bad


def _cases():
    for section, cls in SECTIONS.items():
        for f in F.yaml_fields(cls):
            spec = F.spec_of(f)
            if spec.choices is not None:
                yield section, cls, f.name, "no-such-choice", "one of " + ", ".join(spec.choices)
            elif isinstance(f.default, bool):
                yield section, cls, f.name, "yes", "true or false"
            else:
                for v in _out_of_range(spec):
                    yield section, cls, f.name, v, F.allowed_text(spec, float)[:12]


@pytest.mark.parametrize("section,cls,name,value,allowed", list(_cases()))
def test_every_declared_bound_is_the_parsers(section, cls, name, value, allowed):
    """Each YAML field of each section refuses what its declaration refuses, naming the
    path, the value and what is allowed."""
    path = f"{section}.{name}"
    raw = {name: value}
    if cls is PolicyConfig and name in ("split", "offload_step"):
        raw["name"] = "fixed"
        raw.setdefault("split", 1)
    with pytest.raises(WorkloadError) as e:
        parse_workload(_with(section, raw))
    msg = str(e.value)
    shown = path.replace("devices.0", "devices[0]")
    assert f"workload field {shown}=" in msg and "is invalid: allowed " in msg and allowed in msg, msg


def test_sections_parse_straight_into_the_run_dataclasses():
    d = _with("server", {"max_batch": 3, "max_kv_mib": 1.5, "batching": False, "device": "cpu", "dtype": "float16"})
    d["policy"] = {"name": "fixed", "split": 2, "offload_step": 4, "adapt": True}
    d["devices"][0].update(link={"rate_mbps": 5}, budgets={"ar_buffer_bytes": 64000, "memory_mib": 2},
                           emulation={"slowdown": 2}, link_schedule=[{"at_request": 1, "snr_db": 3}])
    wl = parse_workload(d)
    assert type(wl.server) is ServerConfig and type(wl.policy) is PolicyConfig
    assert (wl.server.max_batch, wl.server.batching, wl.server.device, wl.server.dtype) == (3, False, "cpu", "float16")
    assert wl.server.max_kv_bytes == int(1.5 * 2**20) and wl.server.max_kv_bytes_per_device == 128 << 20
    assert (wl.policy.name, wl.policy.split, wl.policy.offload_step, wl.policy.adapt) == ("fixed", 2, 4, True)
    g = wl.devices[0]
    assert g.link == LinkSpec(rate_mbps=5.0) and g.budgets == BudgetSpec(ar_buffer_bytes=64000.0, memory_mib=2.0)
    assert g.emulation == EmulationSpec(slowdown=2.0) and g.link_schedule == (LinkChange(at_request=1, snr_db=3.0),)
    assert isinstance(g.link.rate_mbps, float) and isinstance(wl.server.max_batch, int)  # 2.0 -> 2, 5 -> 5.0
    # defaults are the dataclasses' own
    plain = parse_workload(BASE)
    assert plain.server == ServerConfig() and plain.policy == PolicyConfig() and plain.devices[0].link == LinkSpec()


@pytest.mark.parametrize("section,name", [
    ("server", "kv_kept_per_idle_device"), ("server", "max_tokens_per_session"),
    ("policy", "new_tokens"), ("policy", "codec"), ("policy", "extra"), ("", "base_dir"),
])
def test_runtime_fields_are_not_yaml_fields(section, name):
    d = _with(f"{section}.{name}" if section else name, 5)
    with pytest.raises(WorkloadError, match="is unknown") as e:
        parse_workload(d)
    assert name not in str(e.value).split("are ")[-1]  # not offered among the allowed fields


def test_fixed_policy_rules_stay_in_the_parser_and_do_not_follow_a_bad_field():
    with pytest.raises(WorkloadError, match="policy.split is missing"):
        parse_workload(_with("policy", {"name": "fixed"}))
    with pytest.raises(WorkloadError, match="only allowed with policy 'fixed', not 'slicer'"):
        parse_workload(_with("policy", {"offload_step": 2}))
    with pytest.raises(WorkloadError) as e:  # one error, not a follow-on "split is missing"
        parse_workload(_with("policy", {"name": "fixed", "split": -1}))
    assert e.value.errors == ["workload field policy.split=-1 is invalid: allowed an integer >= 0 and <= 10000"]
    assert parse_workload(_with("policy", "cloud-only")).policy == PolicyConfig(name="cloud-only")


def test_field_docs_come_from_the_class_source():
    docs = F.field_docs(ServerConfig)
    assert docs["max_batch"] == "Most decode steps run together in one batch (1..1024)."
    assert F.first_sentence(F.field_docs(LinkSpec)["rate_mbps"]).startswith("Transmission rate R in megabits per second")
    assert set(F.field_docs(Workload)) >= {"requests", "seed", "server"} and "count" in F.field_docs(DeviceGroup)


def test_check_is_strict():
    assert F.check(ServerConfig, "max_batch", 2.0) == 2 and type(F.check(ServerConfig, "max_batch", 2.0)) is int
    assert F.check(LinkChange, "rate_mbps", None) is None  # Optional
    for bad in (None, True, 0, 1025, 2.5, float("inf"), "3"):
        with pytest.raises(F.FieldError):
            F.check(ServerConfig, "max_batch", bad)
    with pytest.raises(F.FieldError) as e:
        F.check(LinkSpec, "epsilon", 1.0, "x.epsilon")
    assert (e.value.path, e.value.allowed) == ("x.epsilon", "a number in (0, 1)")


# ----------------------------------------------------------------------------- slicer run flags


def _run_args(*argv):
    return build_parser(["run"]).parse_args(["run", *argv])


def test_run_flags_are_derived_from_server_config():
    p = build_parser(["run", "--help"])
    help_text = p._subparsers._group_actions[0].choices["run"].format_help()
    for f in F.yaml_fields(ServerConfig):
        flag = F.flag_name(f)
        assert flag in help_text, flag
    assert "--server-device" in help_text and "--kv-kept-per-idle-device" not in help_text
    assert "Most decode steps run together in one batch" in help_text  # the field's docstring
    assert "default: the workload's server.max_batch, else 16" in help_text


def test_run_flags_override_only_what_is_given():
    wl = parse_workload(_with("server", {"max_batch": 5, "session_ttl_s": 9}))
    out = with_overrides(wl, _run_args("--max-batch", "3", "--no-batching", "--max-kv-mib", "64",
                                       "--server-dtype", "bfloat16"))
    assert (out.server.max_batch, out.server.batching, out.server.max_kv_mib, out.server.dtype) == (3, False, 64.0, "bfloat16")
    assert out.server.session_ttl_s == 9.0  # from the workload: not given on the command line
    assert dataclasses.replace(out.server, max_batch=5, batching=True, max_kv_mib=512.0, dtype=None) == wl.server
    assert with_overrides(wl, _run_args()) is wl


@pytest.mark.parametrize("argv,needle", [
    (["--max-batch", "0"], "argument --max-batch: '0' is invalid: allowed an integer >= 1 and <= 1024"),
    (["--max-batch", "2.5"], "allowed an integer >= 1 and <= 1024"),
    (["--max-kv-mib", "nan"], "argument --max-kv-mib: 'nan' is invalid: allowed a finite number > 0"),
    (["--session-ttl-s", "fast"], "'fast' is not a number"),
    (["--server-device", "tpu"], "invalid choice: 'tpu'"),
])
def test_run_flags_check_the_fields_bounds(argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        main(["run", *argv])
    assert e.value.code == 2
    assert needle in capsys.readouterr().err


def test_run_flag_reaches_the_run(model_dir, tmp_path, capsys):
    """--max-sessions 1 overrides the workload's 64: two devices no longer fit, and the
    run says so before anything starts; --max-batch 2 reaches the server of a run."""
    wl_file = tmp_path / "w.yaml"
    wl_file.write_text(json.dumps({"name": "flags", "model": str(model_dir), "inputs": {"prompts": [[1, 2, 3]]},
                                   "devices": [{"class": "raspberry-pi-5", "count": 2}], "requests": 1,
                                   "max_new_tokens": 2, "server": {"max_sessions": 64}}))
    rc = main(["run", str(wl_file), "--in-process", "--quiet", "--max-sessions", "1", "--out", str(tmp_path / "r0")])
    assert rc == 2
    assert "server.max_sessions=1 is fewer than the 2 devices" in capsys.readouterr().err
    rc = main(["run", str(wl_file), "--in-process", "--quiet", "--json", "--max-batch", "2", "--out", str(tmp_path / "r1")])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert json.loads((tmp_path / "r1" / "workload.json").read_text())["server"]["max_batch"] == 2
    assert json.loads(out)["workload"]["server"]["max_batch"] == 2


def test_no_torch_to_parse_a_workload_or_build_the_run_flags():
    code = ("import sys; from slicer.orchestrator.workload import parse_workload; "
            "from slicer.orchestrator.cli import build_parser; build_parser(['run']); "
            f"parse_workload({BASE!r}); print('torch' in sys.modules)")
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert out.stdout.strip() == "False", out.stderr


@dataclasses.dataclass(frozen=True)
class _Counted:
    n: int = F.spec_field(1, lo=0)
    """A count."""


def test_an_int_field_is_whole_even_without_integer_in_its_spec():
    """A field typed ``int`` refuses 2.5 and stores 2.0 as 2, whatever its spec says."""
    assert F.check(_Counted, "n", 2.0) == 2 and isinstance(F.check(_Counted, "n", 2.0), int)
    with pytest.raises(F.FieldError, match="an integer >= 0"):
        F.check(_Counted, "n", 2.5)
