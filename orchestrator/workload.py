"""Workloads: a YAML file parsed once into documented dataclasses.

A workload names the model, the inputs, the device groups (class, count, link, budgets,
emulation, scripted link changes), the policy, the codec, the mode, how many requests
each device sends and how long they generate, and the server's limits. ``load_workload``
parses and validates it; every error names the field (as a dotted path), the bad value
and what is allowed, and unknown fields are rejected (a typo never silently becomes a
default).

Example (``examples/quickstart.yaml``)::

    name: quickstart
    model: models/slicer-tiny
    inputs: {prompts: ["Once upon a time", "The little dog"]}
    devices:
      - {class: phone, count: 1, link: {rate_mbps: 20}, budgets: {latency_ms: 2000}}
      - {class: laptop, count: 1}
    policy: slicer
    requests: 2
    max_new_tokens: 8
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from slicer.codec import CodecConfig, CodecError
from slicer.policies.link import DEFAULT_BANDWIDTH_HZ, DEFAULT_EPSILON, DEFAULT_SNR, linear_to_db

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_WORKLOAD = REPO_ROOT / "examples" / "quickstart.yaml"

POLICIES = ("slicer", "cloud-only", "edge-only", "fixed", "neurosurgeon", "opsc")
PRECISIONS = ("auto", "float32", "float16", "bfloat16", "int8", "int4")
MODES = ("auto", "split", "local-then-offload", "edge-only", "cloud-only")


class WorkloadError(ValueError):
    """A workload field is missing, unknown or out of range (the message names it)."""


def _bad(path: str, value: Any, allowed: str) -> WorkloadError:
    return WorkloadError(f"workload field {path}={value!r} is invalid: allowed {allowed}")


@dataclass(frozen=True)
class LinkSpec:
    """A device's link to the server (SLICER Eq. 1 parameters). The defaults are the
    paper's, the same ones ``slicer plan`` and ``slicer sweep`` use (``policies.link``)."""

    rate_mbps: float = 20.0
    """Transmission rate R in megabits per second (20: below the default channel's
    capacity W·log2(1+γ) = 34.6 Mbit/s, so a device with no link given is feasible)."""
    snr_db: float = linear_to_db(DEFAULT_SNR)
    """Average signal-to-noise ratio γ in dB (10 dB)."""
    epsilon: float = DEFAULT_EPSILON
    """Outage probability target ε in (0, 1) of the ε-outage latency (0.001)."""
    bandwidth_hz: float = DEFAULT_BANDWIDTH_HZ
    """Channel bandwidth W in hertz (10 MHz)."""

    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class LinkChange:
    """A scripted change of a device's link, applied before one of its requests."""

    at_request: int
    """Index (0-based) of the device's request before which the link changes."""
    rate_mbps: float | None = None
    """New rate; None keeps the current one."""
    snr_db: float | None = None
    """New SNR; None keeps the current one."""
    epsilon: float | None = None
    """New outage target; None keeps the current one."""
    bandwidth_hz: float | None = None
    """New bandwidth; None keeps the current one."""

    def apply(self, link: LinkSpec) -> LinkSpec:
        changes = {k: v for k, v in dataclasses.asdict(self).items() if k != "at_request" and v is not None}
        return dataclasses.replace(link, **changes)


@dataclass(frozen=True)
class BudgetSpec:
    """What a device may spend per request."""

    latency_ms: float | None = None
    """Latency budget D per output token in milliseconds (the planner's per-step budget,
    Eq. 2; the hand-off step gets w times it, Eq. 5); None: the policy's default (1 s)."""
    memory_mb: float | None = None
    """Memory budget M of the device for weights + KV cache in MiB; None: unconstrained."""


@dataclass(frozen=True)
class EmulationSpec:
    """Emulation of a device class and its link on one machine. Figures that depend on
    it are labelled ``emulated`` in every record."""

    slowdown: float = 1.0
    """The device computes this many times slower than this machine: after each measured
    compute interval it sleeps ``(slowdown - 1) ×`` that interval. 1 = no emulation."""
    memory_mb: float | None = None
    """Emulated memory cap in MiB: a plan whose front segment and KV cache exceed it is
    refused by the device (and the policy is told). None: no cap."""
    link: bool = False
    """Delay each payload by Eq. 1's ε-outage latency of its real size over ``link``
    (the wire is loopback otherwise)."""

    @property
    def active(self) -> bool:
        return self.slowdown != 1.0 or self.memory_mb is not None or self.link


@dataclass(frozen=True)
class DeviceGroup:
    """``count`` identical devices of one class."""

    device_class: str
    """Device class (YAML key ``class``): a name from ``slicer.policies.devices``' catalog, and
    the ``device-class`` label of the nodes its actors go to."""
    count: int = 1
    """Number of devices in the group."""
    name: str = ""
    """Prefix of the devices' ids (default: the class): ids are ``NAME-0``, ``NAME-1``..."""
    link: LinkSpec = field(default_factory=LinkSpec)
    """The devices' link to the server."""
    budgets: BudgetSpec = field(default_factory=BudgetSpec)
    """Latency and memory budgets."""
    emulation: EmulationSpec = field(default_factory=EmulationSpec)
    """Device/link emulation (off by default)."""
    link_schedule: tuple[LinkChange, ...] = ()
    """Scripted link changes over the run, e.g. ``[{at_request: 3, rate_mbps: 2}]``."""
    requests: int | None = None
    """Requests per device of this group; None: the workload's ``requests``."""

    def device_ids(self) -> list[str]:
        prefix = self.name or self.device_class
        return [f"{prefix}-{i}" for i in range(self.count)]


@dataclass(frozen=True)
class ServerSpec:
    """The shared server's batching and admission limits."""

    max_batch: int = 16
    """Most decode steps run together in one batch."""
    batch_window_ms: float = 2.0
    """How long the batching loop waits for more steps once one is queued."""
    batching: bool = True
    """False runs every step alone (the batching benchmark's baseline)."""
    max_sessions: int = 64
    """Most sessions (requests in flight) held at once; more are refused."""
    max_kv_mb: float = 512.0
    """Most KV-cache MiB held over all sessions; a session that would exceed it is refused."""
    max_payload_bytes: int = 8 << 20
    """Largest payload accepted in one step."""
    step_timeout_s: float = 60.0
    """An edge waits at most this long for one server step."""
    max_sessions_per_device: int = 4
    """Most sessions ONE device may hold at once (a device has one request in flight)."""
    max_kv_mb_per_device: float = 128.0
    """Most KV-cache MiB ONE device may hold, so no device can take the whole ``max_kv_mb``."""


@dataclass(frozen=True)
class InputsSpec:
    """The prompts requests are made of."""

    prompts: tuple[str | tuple[int, ...], ...] = ()
    """Prompts: strings (need the model's tokenizer) or lists of token ids."""
    task_file: str | None = None
    """A file of prompts: ``.jsonl`` with a ``prompt`` (and optional ``answer``) per line,
    or a text file with one prompt per line. Relative to the workload's folder."""


@dataclass(frozen=True)
class PolicySpec:
    """Which policy plans the splits, and its arguments."""

    name: str = "slicer"
    """One of ``slicer``, ``cloud-only``, ``edge-only``, ``fixed``, ``neurosurgeon``, ``opsc``."""
    split: int | None = None
    """``fixed`` only: the split layer ℓ."""
    offload_step: int | None = None
    """``fixed`` only: the offload step w (1 = per-token split from the first step)."""
    replan: bool = True
    """Re-plan a device when its reported link or memory changes."""


@dataclass(frozen=True)
class Workload:
    """A whole workload, as parsed from YAML."""

    name: str
    """Name of the run (the run folder is ``<time>-<name>``)."""
    model: str
    """Model: a local HF folder (relative to the workload's folder or the repo), or a
    name ``slicer.actors.models.load_model`` knows."""
    devices: tuple[DeviceGroup, ...]
    """Device groups."""
    inputs: InputsSpec = field(default_factory=InputsSpec)
    """Prompts."""
    policy: PolicySpec = field(default_factory=PolicySpec)
    """The planning policy."""
    codec: CodecConfig | None = None
    """Codec of every feature: a ``CodecConfig`` spec string (``lossless``,
    ``slicer:sparsity=0.75``) or mapping; None (``auto``): the policy chooses."""
    precision: str = "auto"
    """Precision of the edge's front segment: ``auto`` (the plan's), ``float32``,
    ``float16``, ``bfloat16``, ``int8``, ``int4``. ``float32`` with a lossless codec
    reproduces the unsplit model's tokens exactly."""
    mode: str = "auto"
    """``auto`` (the plan's mode), ``split`` (per-token split from the first step),
    ``local-then-offload``, ``edge-only`` or ``cloud-only`` (forces that mode)."""
    requests: int = 2
    """Requests per device."""
    max_new_tokens: int = 8
    """Tokens generated per request (greedy)."""
    seed: int = 0
    """Seed of everything random: the codec's seed (its rotation and tie-breaks) unless the
    codec spec names one."""
    server: ServerSpec = field(default_factory=ServerSpec)
    """Server limits."""
    base_dir: str = "."
    """Folder of the workload file (relative paths resolve against it). Not a YAML field."""

    def all_devices(self) -> list[tuple[str, DeviceGroup]]:
        return [(did, g) for g in self.devices for did in g.device_ids()]

    def device_classes(self) -> list[str]:
        return sorted({g.device_class for g in self.devices})

    def resolve_path(self, p: str) -> Path | None:
        """A path relative to the workload's folder, the cwd or the repo; None if none exists."""
        cand = Path(p).expanduser()
        if cand.is_absolute():
            return cand if cand.exists() else None
        for root in (Path(self.base_dir), Path.cwd(), REPO_ROOT, REPO_ROOT / "examples"):
            if (root / cand).exists():
                return (root / cand).resolve()
        return None

    def model_ref(self) -> str:
        """What to pass to ``load_model``: a resolved folder if one exists, else the name."""
        path = self.resolve_path(self.model)
        return str(path) if path is not None else self.model

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["codec"] = self.codec.spec() if self.codec is not None else "auto"
        return json.loads(json.dumps(d, default=str))


# --------------------------------------------------------------------------- parsing


def _num(path: str, v: Any, lo: float | None = None, hi: float | None = None, *,
         lo_open: bool = False, integer: bool = False, allowed: str | None = None) -> Any:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool)
    if integer:
        ok = ok and float(v).is_integer()
    if ok and lo is not None:
        ok = v > lo if lo_open else v >= lo
    if ok and hi is not None:
        ok = v <= hi
    if not ok:
        if allowed is None:
            kind = "an integer" if integer else "a number"
            rng = []
            if lo is not None:
                rng.append(f"{'>' if lo_open else '>='} {lo}")
            if hi is not None:
                rng.append(f"<= {hi}")
            allowed = kind + (" " + " and ".join(rng) if rng else "")
        raise _bad(path, v, allowed)
    return int(v) if integer else float(v)


def _opt(path: str, v: Any, fn) -> Any:
    return None if v is None else fn(path, v)


def _mapping(path: str, raw: Any, cls: type) -> dict[str, Any]:
    """Check ``raw`` is a mapping whose keys are fields of ``cls``."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise _bad(path, raw, f"a mapping with fields {_field_names(cls)}")
    names = _field_names(cls)
    for k in raw:
        if k not in names:
            raise WorkloadError(f"workload field {path}.{k} is unknown: allowed fields of {path or 'the workload'} are {names}")
    return dict(raw)


def _field_names(cls: type) -> list[str]:
    names = [f.name for f in dataclasses.fields(cls) if f.name != "base_dir"]
    return ["class" if n == "device_class" else n for n in names]


def _link(path: str, raw: Any) -> LinkSpec:
    d = _mapping(path, raw, LinkSpec)
    dflt = LinkSpec()
    return LinkSpec(
        rate_mbps=_num(f"{path}.rate_mbps", d.get("rate_mbps", dflt.rate_mbps), 0, lo_open=True),
        snr_db=_num(f"{path}.snr_db", d.get("snr_db", dflt.snr_db), -50, 100),
        epsilon=_open01(f"{path}.epsilon", d.get("epsilon", dflt.epsilon)),
        bandwidth_hz=_num(f"{path}.bandwidth_hz", d.get("bandwidth_hz", dflt.bandwidth_hz), 0, lo_open=True),
    )


def _open01(path: str, v: Any) -> float:
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0.0 < v < 1.0:
        raise _bad(path, v, "a number in (0, 1)")
    return float(v)


def _link_change(path: str, raw: Any) -> LinkChange:
    d = _mapping(path, raw, LinkChange)
    if "at_request" not in d:
        raise WorkloadError(f"workload field {path}.at_request is missing: every link change needs one (an integer >= 0)")
    change = LinkChange(
        at_request=_num(f"{path}.at_request", d["at_request"], 0, integer=True),
        rate_mbps=_opt(f"{path}.rate_mbps", d.get("rate_mbps"), lambda p, v: _num(p, v, 0, lo_open=True)),
        snr_db=_opt(f"{path}.snr_db", d.get("snr_db"), lambda p, v: _num(p, v, -50, 100)),
        epsilon=_opt(f"{path}.epsilon", d.get("epsilon"), _open01),
        bandwidth_hz=_opt(f"{path}.bandwidth_hz", d.get("bandwidth_hz"), lambda p, v: _num(p, v, 0, lo_open=True)),
    )
    if all(getattr(change, k) is None for k in ("rate_mbps", "snr_db", "epsilon", "bandwidth_hz")):
        raise WorkloadError(f"workload field {path} changes nothing: give at least one of rate_mbps, snr_db, epsilon, bandwidth_hz")
    return change


def _budgets(path: str, raw: Any) -> BudgetSpec:
    d = _mapping(path, raw, BudgetSpec)
    return BudgetSpec(
        latency_ms=_opt(f"{path}.latency_ms", d.get("latency_ms"), lambda p, v: _num(p, v, 0, lo_open=True)),
        memory_mb=_opt(f"{path}.memory_mb", d.get("memory_mb"), lambda p, v: _num(p, v, 0, lo_open=True)),
    )


def _emulation(path: str, raw: Any) -> EmulationSpec:
    d = _mapping(path, raw, EmulationSpec)
    link = d.get("link", False)
    if not isinstance(link, bool):
        raise _bad(f"{path}.link", link, "true or false")
    return EmulationSpec(
        slowdown=_num(f"{path}.slowdown", d.get("slowdown", 1.0), 1.0, 1000.0),
        memory_mb=_opt(f"{path}.memory_mb", d.get("memory_mb"), lambda p, v: _num(p, v, 0, lo_open=True)),
        link=link,
    )


def _device_group(path: str, raw: Any) -> DeviceGroup:
    d = _mapping(path, raw, DeviceGroup)
    cls = d.get("class")
    if not isinstance(cls, str) or not cls.strip() or not all(c.isalnum() or c in "-_." for c in cls):
        raise _bad(f"{path}.class", cls, "a device class name (letters, digits, - _ .), e.g. phone, jetson, laptop")
    name = d.get("name", "")
    if not isinstance(name, str) or not all(c.isalnum() or c in "-_." for c in name):
        raise _bad(f"{path}.name", name, "letters, digits, - _ .")
    sched_raw = d.get("link_schedule", []) or []
    if not isinstance(sched_raw, list):
        raise _bad(f"{path}.link_schedule", sched_raw, "a list of {at_request: N, rate_mbps: ...}")
    sched = tuple(_link_change(f"{path}.link_schedule[{i}]", c) for i, c in enumerate(sched_raw))
    return DeviceGroup(
        device_class=cls,
        count=_num(f"{path}.count", d.get("count", 1), 1, 256, integer=True),
        name=name,
        link=_link(f"{path}.link", d.get("link")),
        budgets=_budgets(f"{path}.budgets", d.get("budgets")),
        emulation=_emulation(f"{path}.emulation", d.get("emulation")),
        link_schedule=tuple(sorted(sched, key=lambda c: c.at_request)),
        requests=_opt(f"{path}.requests", d.get("requests"), lambda p, v: _num(p, v, 1, 100000, integer=True)),
    )


def _server(path: str, raw: Any) -> ServerSpec:
    d = _mapping(path, raw, ServerSpec)
    batching = d.get("batching", True)
    if not isinstance(batching, bool):
        raise _bad(f"{path}.batching", batching, "true or false")
    return ServerSpec(
        max_batch=_num(f"{path}.max_batch", d.get("max_batch", 16), 1, 1024, integer=True),
        batch_window_ms=_num(f"{path}.batch_window_ms", d.get("batch_window_ms", 2.0), 0, 1000),
        batching=batching,
        max_sessions=_num(f"{path}.max_sessions", d.get("max_sessions", 64), 1, 100000, integer=True),
        max_kv_mb=_num(f"{path}.max_kv_mb", d.get("max_kv_mb", 512.0), 0, lo_open=True),
        max_payload_bytes=_num(f"{path}.max_payload_bytes", d.get("max_payload_bytes", 8 << 20), 64, 1 << 31, integer=True),
        step_timeout_s=_num(f"{path}.step_timeout_s", d.get("step_timeout_s", 60.0), 0, 3600, lo_open=True),
        max_sessions_per_device=_num(f"{path}.max_sessions_per_device", d.get("max_sessions_per_device", 4), 1, 100000,
                                     integer=True),
        max_kv_mb_per_device=_num(f"{path}.max_kv_mb_per_device", d.get("max_kv_mb_per_device", 128.0), 0, lo_open=True),
    )


def _inputs(path: str, raw: Any) -> InputsSpec:
    if isinstance(raw, list):
        raw = {"prompts": raw}
    d = _mapping(path, raw, InputsSpec)
    prompts_raw = d.get("prompts", []) or []
    if not isinstance(prompts_raw, list):
        raise _bad(f"{path}.prompts", prompts_raw, "a list of strings or of lists of token ids")
    prompts: list[str | tuple[int, ...]] = []
    for i, p in enumerate(prompts_raw):
        if isinstance(p, str) and p:
            prompts.append(p)
        elif isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in p):
            prompts.append(tuple(p))
        else:
            raise _bad(f"{path}.prompts[{i}]", p, "a non-empty string or a non-empty list of token ids (ints >= 0)")
    task_file = d.get("task_file")
    if task_file is not None and not isinstance(task_file, str):
        raise _bad(f"{path}.task_file", task_file, "a path (string)")
    return InputsSpec(prompts=tuple(prompts), task_file=task_file)


def _policy(path: str, raw: Any) -> PolicySpec:
    if isinstance(raw, str):
        raw = {"name": raw}
    d = _mapping(path, raw, PolicySpec)
    name = d.get("name", "slicer")
    if name not in POLICIES:
        raise _bad(f"{path}.name" if isinstance(raw, dict) and "name" in raw else path, name, "one of " + ", ".join(POLICIES))
    split = _opt(f"{path}.split", d.get("split"), lambda p, v: _num(p, v, 0, 10000, integer=True))
    step = _opt(f"{path}.offload_step", d.get("offload_step"), lambda p, v: _num(p, v, 1, 100000, integer=True))
    if name == "fixed" and split is None:
        raise WorkloadError(f"workload field {path}.split is missing: policy 'fixed' needs a split layer (an integer >= 0)")
    if name != "fixed" and (split is not None or step is not None):
        raise WorkloadError(f"workload fields {path}.split/offload_step are only allowed with policy 'fixed', not {name!r}")
    replan = d.get("replan", True)
    if not isinstance(replan, bool):
        raise _bad(f"{path}.replan", replan, "true or false")
    return PolicySpec(name=name, split=split, offload_step=step, replan=replan)


def _codec(path: str, raw: Any) -> CodecConfig | None:
    if raw is None or raw == "auto":
        return None
    try:
        if isinstance(raw, str):
            return CodecConfig.parse(raw)
        if isinstance(raw, dict):
            return CodecConfig(**raw)
    except TypeError as e:
        raise WorkloadError(f"workload field {path}={raw!r} is invalid: {e}") from e
    except CodecError as e:
        raise WorkloadError(f"workload field {path}={raw!r} is invalid: {e}") from e
    raise _bad(path, raw, "'auto', a codec spec string (e.g. lossless, slicer:sparsity=0.75) or a mapping of CodecConfig fields")


def parse_workload(raw: Any, base_dir: str | Path = ".") -> Workload:
    """Validate a parsed YAML document into a ``Workload``."""
    d = _mapping("", raw, Workload) if isinstance(raw, dict) else None
    if d is None:
        raise WorkloadError(f"a workload is a mapping of fields {_field_names(Workload)}, got {type(raw).__name__}")
    for req in ("model", "devices"):
        if req not in d:
            raise WorkloadError(f"workload field {req} is missing (required)")
    name = d.get("name", Path(str(base_dir)).name or "run")
    if not isinstance(name, str) or not name or not all(c.isalnum() or c in "-_." for c in name):
        raise _bad("name", name, "a non-empty name of letters, digits, - _ .")
    model = d["model"]
    if not isinstance(model, str) or not model:
        raise _bad("model", model, "a model folder or name (string)")
    devs = d["devices"]
    if not isinstance(devs, list) or not devs:
        raise _bad("devices", devs, "a non-empty list of device groups {class: ..., count: ...}")
    groups = tuple(_device_group(f"devices[{i}]", g) for i, g in enumerate(devs))
    ids = [did for g in groups for did in g.device_ids()]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise WorkloadError(f"workload field devices gives duplicate device ids {dup}: set a distinct `name` per group")
    mode = d.get("mode", "auto")
    if mode not in MODES:
        raise _bad("mode", mode, "one of " + ", ".join(MODES))
    precision = d.get("precision", "auto")
    if precision not in PRECISIONS:
        raise _bad("precision", precision, "one of " + ", ".join(PRECISIONS))
    wl = Workload(
        name=name,
        precision=precision,
        model=model,
        devices=groups,
        inputs=_inputs("inputs", d.get("inputs")),
        policy=_policy("policy", d.get("policy", "slicer")),
        codec=_codec("codec", d.get("codec")),
        mode=mode,
        requests=_num("requests", d.get("requests", 2), 1, 100000, integer=True),
        max_new_tokens=_num("max_new_tokens", d.get("max_new_tokens", 8), 1, 4096, integer=True),
        seed=_num("seed", d.get("seed", 0), 0, 2**32 - 1, integer=True),
        server=_server("server", d.get("server")),
        base_dir=str(base_dir),
    )
    if not wl.inputs.prompts and wl.inputs.task_file is None:
        raise WorkloadError("workload field inputs is empty: give inputs.prompts (a list) or inputs.task_file")
    if wl.inputs.task_file is not None and wl.resolve_path(wl.inputs.task_file) is None:
        raise _bad("inputs.task_file", wl.inputs.task_file, f"an existing file (looked in {wl.base_dir}, the cwd and the repo)")
    return wl


def load_workload(path: str | Path) -> Workload:
    """Read and validate a workload YAML file."""
    p = Path(path)
    if not p.exists():
        raise WorkloadError(f"workload file {str(p)!r} does not exist")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise WorkloadError(f"workload file {str(p)!r} is not valid YAML: {e}") from e
    return parse_workload(raw, base_dir=p.resolve().parent)


def load_prompts(wl: Workload) -> list[dict[str, Any]]:
    """The workload's prompts as ``{"prompt": str | list[int], "answer": ...}`` records."""
    out: list[dict[str, Any]] = [{"prompt": list(p) if isinstance(p, tuple) else p} for p in wl.inputs.prompts]
    if wl.inputs.task_file is not None:
        path = wl.resolve_path(wl.inputs.task_file)
        assert path is not None
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".jsonl":
            for i, line in enumerate(text.splitlines()):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise WorkloadError(f"inputs.task_file {path} line {i + 1} is not JSON: {e}") from e
                if not isinstance(rec, dict) or "prompt" not in rec:
                    raise WorkloadError(f"inputs.task_file {path} line {i + 1} has no 'prompt' field")
                out.append(rec)
        else:
            out.extend({"prompt": ln} for ln in text.splitlines() if ln.strip())
    if not out:
        raise WorkloadError("workload inputs hold no prompt")
    return out
