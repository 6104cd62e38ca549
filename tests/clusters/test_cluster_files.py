"""Every `ray up` file in clusters/ passes Ray's own validation (offline: the schema and
checks `ray up` runs before it contacts a provider) and keeps the secure defaults: token
authentication on every `ray start` with the token from a file, the dashboard on
127.0.0.1, internal IPs, a pre-made AWS security group, no public GCP addresses, labels
and slots on every node, and setup that installs torch before the project.

The start commands are also *run* with fake `ray` and `hostname` programs, so what each
`ray start` would receive (arguments and RAY_AUTH_MODE) is checked, not just grepped."""
from __future__ import annotations

import copy
import json
import os
import re
import shlex
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
FILES = sorted((REPO / "clusters").glob("*.yaml"))
CLOUD = {"aws", "gcp", "azure"}
CATALOG = set(yaml.safe_load((REPO / "policies" / "devices.yaml").read_text()))


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def prepared(path: Path) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = prepare_config(copy.deepcopy(load(path)))
    validate_config(cfg)
    return cfg


def provider(cfg: dict) -> str:
    return cfg["provider"]["type"]


def test_the_required_files_are_there():
    kinds = {provider(load(f)) for f in FILES}
    assert "aws" in kinds and "local" in kinds and kinds & {"gcp", "azure"}, kinds


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_passes_rays_own_validation(path):
    cfg = prepared(path)
    assert cfg["head_node_type"] in cfg["available_node_types"]


def test_validation_is_not_a_no_op():
    """The same validation rejects what Ray rejects: non-string label values, fractional
    resources, node types on the local provider."""
    from jsonschema import ValidationError

    aws = load(REPO / "clusters" / "aws.yaml")
    bad = copy.deepcopy(aws)
    bad["available_node_types"]["edge-phone"]["labels"]["device-class"] = 7
    with pytest.raises(ValidationError):
        prepared_dict(bad)
    bad = copy.deepcopy(aws)
    bad["available_node_types"]["edge-phone"]["resources"]["edge_slot"] = 0.5
    with pytest.raises(ValidationError):
        prepared_dict(bad)
    onprem = load(next(f for f in FILES if provider(load(f)) == "local"))
    onprem["available_node_types"] = {"x": {"node_config": {}, "resources": {}}}
    import click

    with pytest.raises(click.ClickException):  # cli_logger.abort: "not supported for on-premise"
        prepared_dict(onprem)


def prepared_dict(cfg: dict) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    out = prepare_config(copy.deepcopy(cfg))
    validate_config(out)
    return out


@pytest.mark.parametrize("path", [f for f in FILES if provider(load(f)) in CLOUD], ids=lambda p: p.name)
def test_cloud_node_types_have_labels_slots_and_private_networking(path):
    cfg = load(path)
    assert cfg["provider"].get("use_internal_ips") is True
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["labels"] == {"role": "server"} and head["resources"].get("server_slot", 0) >= 1
    edges = {k: t for k, t in types.items() if k != cfg["head_node_type"]}
    classes = {t["labels"].get("device-class") for t in edges.values()}
    assert len(classes) >= 2 and classes <= CATALOG, classes  # two edge classes the policy knows
    for name, t in edges.items():
        assert t["labels"]["role"] == "edge", name
        assert isinstance(t["resources"].get("edge_slot"), int) and t["resources"]["edge_slot"] >= 1, name
        assert t.get("min_workers", 0) >= 1, f"{name}: no node of this class would exist at start"
    for name, t in types.items():
        nc = t["node_config"]
        if provider(cfg) == "aws":
            # Ray's own group opens SSH to 0.0.0.0/0: every type must name a pre-made one.
            assert nc.get("SecurityGroupIds"), name
        if provider(cfg) == "gcp":
            nics = nc.get("networkInterfaces")
            assert nics and all("accessConfigs" not in n for n in nics), f"{name}: external IP"
    assert "security_group" not in cfg["provider"]
    from ray.autoscaler._private.util import prepare_config

    gpu = head["node_config"].get("InstanceType", head["node_config"].get("machineType", ""))
    assert re.match(r"(g\d|p\d|g2-)", gpu), f"server node {gpu} has no GPU"
    prepare_config(copy.deepcopy(cfg))


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_token_comes_from_a_file_never_inline(path):
    text = path.read_text()
    cfg = load(path)
    assert not re.search(r"RAY_AUTH_TOKEN\s*=", text), "token written in the file"
    mounts = cfg.get("file_mounts", {})
    assert any(k.endswith(".ray/auth_token") and v.endswith(".ray/auth_token") for k, v in mounts.items())
    assert any("chmod 600 ~/.ray/auth_token" in c for c in cfg["setup_commands"])


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_setup_installs_torch_then_the_project(path):
    cmds = load(path)["setup_commands"]
    torch_i = next(i for i, c in enumerate(cmds) if re.search(r"pip install( \S+)* torch\b", c))
    proj_i = next(i for i, c in enumerate(cmds) if "-e ~/slicer" in c)
    assert torch_i < proj_i
    assert "~/slicer" in load(path)["file_mounts"]


def _fake_bin(tmp: Path, hostname_out: str) -> dict:
    """A PATH with a fake `ray` that records its args and RAY_AUTH_MODE, and a fake `hostname`."""
    b = tmp / "bin"
    b.mkdir(exist_ok=True)
    # One record per call: the mode, then each argument on its own line, then a separator.
    (b / "ray").write_text("#!/bin/sh\nprintf '%s\\n' \"mode=${RAY_AUTH_MODE-<unset>}\" \"$@\" '<end>' >> "
                           f"{shlex.quote(str(tmp / 'calls.txt'))}\n")
    (b / "hostname").write_text(f"#!/bin/sh\necho {shlex.quote(hostname_out)}\n")
    for f in ("ray", "hostname"):
        (b / f).chmod((b / f).stat().st_mode | stat.S_IEXEC)
    return {"PATH": f"{b}:{os.environ['PATH']}", "RAY_HEAD_IP": "10.9.9.9", "HOME": str(tmp)}


def run_commands(cmds: list[str], tmp: Path, hostname_out: str = "10.0.0.1") -> tuple[int, list[dict]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(_fake_bin(tmp, hostname_out))
    calls = tmp / "calls.txt"
    calls.unlink(missing_ok=True)
    rc = 0
    for c in cmds:
        rc = subprocess.run(["bash", "-c", c], env=env, capture_output=True, text=True, timeout=30).returncode
        if rc:
            break
    out, cur = [], []
    for line in (calls.read_text().splitlines() if calls.exists() else []):
        if line == "<end>":
            mode = cur[0].split("=", 1)[1]
            out.append({"mode": None if mode == "<unset>" else mode, "args": cur[1:]})
            cur = []
        else:
            cur.append(line)
    return rc, out


def _flag(args: list[str], name: str) -> str | None:
    for a in args:
        if a.startswith(f"--{name}="):
            return a.split("=", 1)[1]
    return None


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_start_commands_run_with_token_mode_and_a_local_dashboard(path, tmp_path):
    cfg = prepared(path)
    rc, calls = run_commands(cfg["head_start_ray_commands"], tmp_path)
    assert rc == 0
    starts = [c for c in calls if c["args"][:1] == ["start"]]
    assert len(starts) == 1 and "--head" in starts[0]["args"]
    assert starts[0]["mode"] == "token"
    assert _flag(starts[0]["args"], "dashboard-host") == "127.0.0.1"
    assert "--disable-usage-stats" in starts[0]["args"]
    for c in cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]:
        assert "0.0.0.0" not in c


def _worker_ips(cfg: dict) -> list[str]:
    return list(cfg["provider"].get("worker_ips", []))


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_worker_start_commands_join_with_token_mode(path, tmp_path):
    from ray._private.label_utils import parse_node_labels_string

    cfg = prepared(path)
    ips = _worker_ips(cfg) or ["10.0.0.7"]
    for ip in ips:
        rc, calls = run_commands(cfg["worker_start_ray_commands"], tmp_path, hostname_out=f"{ip} fe80::1")
        assert rc == 0, ip
        starts = [c for c in calls if c["args"][:1] == ["start"]]
        assert len(starts) == 1 and starts[0]["mode"] == "token"
        assert _flag(starts[0]["args"], "address") == "10.9.9.9:6379"
        if provider(cfg) == "local":
            # No node types on the local provider: labels and slots come from the command.
            labels = parse_node_labels_string(_flag(starts[0]["args"], "labels"))
            assert labels["role"] == "edge" and labels["device-class"] in CATALOG, (ip, labels)
            slots = json.loads(_flag(starts[0]["args"], "resources"))
            assert isinstance(slots["edge_slot"], int) and slots["edge_slot"] >= 1


def test_onprem_head_is_the_server_and_unknown_workers_refuse(tmp_path):
    from ray._private.label_utils import parse_node_labels_string

    path = next(f for f in FILES if provider(load(f)) == "local")
    cfg = prepared(path)
    _, calls = run_commands(cfg["head_start_ray_commands"], tmp_path)
    head = next(c for c in calls if c["args"][:1] == ["start"])
    assert parse_node_labels_string(_flag(head["args"], "labels")) == {"role": "server"}
    assert json.loads(_flag(head["args"], "resources")) == {"server_slot": 1}
    classes = set()
    for ip in _worker_ips(cfg):
        _, calls = run_commands(cfg["worker_start_ray_commands"], tmp_path, hostname_out=ip)
        classes.add(parse_node_labels_string(_flag(calls[-1]["args"], "labels"))["device-class"])
    assert len(classes) >= 2
    rc, calls = run_commands(cfg["worker_start_ray_commands"], tmp_path, hostname_out="192.0.2.99")
    assert rc != 0 and not [c for c in calls if c["args"][:1] == ["start"]]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_ray_pin_is_in_the_package_range_and_the_otlp_extra_is_installed(path):
    """The files pin Ray (driver and cluster must match) to a version the package allows,
    and install the project with its ``otlp`` extra (spans reach a collector)."""
    import tomllib

    from packaging.requirements import Requirement

    deps = tomllib.loads((path.parents[1] / "pyproject.toml").read_text())["project"]["dependencies"]
    ray_req = next(Requirement(d) for d in deps if Requirement(d).name == "ray")
    cmds = " ".join(load(path)["setup_commands"])
    pins = re.findall(r"ray\[default\]==([0-9][0-9.]*)", cmds)
    assert len(pins) == 1, pins
    assert ray_req.specifier.contains(pins[0]), (pins[0], str(ray_req.specifier))
    assert re.search(r"-e ~/slicer'?\[[^\]]*otlp[^\]]*\]", cmds), "the project is installed without [otlp]"
    assert "pinned" in path.read_text() and "same Ray" in path.read_text()  # the file says why it pins
