"""Workloads: a YAML file parsed once into documented dataclasses.

A workload names the model, the inputs, the device groups (class, count, link, budgets,
emulation, scripted link changes), the policy, the codec, the mode, how many requests
each device sends and how long they generate, and the server's limits. ``load_workload``
parses and validates it; every error names the field (as a dotted path), the bad value
(quoted short) and what is allowed, unknown fields are rejected (a typo never silently
becomes a default), and all errors of a file come in one ``WorkloadError``. Every number
is finite and never a boolean; each number field's range is in its docstring (a range
given as "> 0" is also at most ``MAX_NUMBER`` = 1e15). Each field is declared once, with
its default and bounds (``slicer.actors.fields.spec_field``), in the dataclass the run
uses: ``server:`` parses straight into ``ServerConfig``, ``policy:`` into
``PolicyConfig``, a device's ``link``/``budgets``/``emulation`` into the protocol's
``LinkSpec``/``BudgetSpec``/``EmulationSpec``; the checks here come from those
declarations. The file itself is read by ``slicer.orchestrator.yamlload`` (size cap,
UTF-8, no aliases, no duplicate keys).

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

import contextlib
import contextvars
import dataclasses
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slicer.actors.fields import (  # noqa: F401  (MAX_NUMBER: the default bound)
    MAX_NUMBER,
    FieldError,
    check,
    has_spec,
    spec_field,
    yaml_fields,
)
from slicer.actors.policy_actor import POLICIES, PolicyConfig  # noqa: F401  (POLICIES: the policy names)
from slicer.actors.protocol import BudgetSpec, EmulationSpec, LinkChange, LinkSpec, Mode
from slicer.actors.server_config import DEVICES, DTYPES, ServerConfig
from slicer.orchestrator.yamlload import (
    YamlFileError,
    decode_utf8,
    load_yaml_file,
    read_capped,
    short,
)

if TYPE_CHECKING:  # imported when a codec field is parsed: slicer.codec imports torch
    from slicer.codec import CodecConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_WORKLOAD = REPO_ROOT / "examples" / "quickstart.yaml"

PRECISIONS = ("auto", "float32", "float16", "bfloat16", "int8", "int4")
MODES = ("auto", *(m.value for m in Mode))


#: Largest task file read (``inputs.task_file``).
MAX_TASK_FILE_BYTES = 16 << 20
#: Longest prompt (characters or token ids) in a workload or task file.
MAX_PROMPT_LEN = 100_000
#: Most devices of one workload (over all groups).
MAX_DEVICES = 4096
#: Longest message a workload error carries (its errors beyond it are counted, not shown).
MAX_MESSAGE_CHARS = 1800


class WorkloadError(ValueError):
    """A workload field is missing, unknown or out of range (the message names it).
    ``errors``: every error found in the workload, one message each."""

    def __init__(self, message: str, errors: list[str] | None = None):
        super().__init__(message)
        self.errors = list(errors) if errors else [message]


def _bad(path: str, value: Any, allowed: str) -> WorkloadError:
    return WorkloadError(f"workload field {path}={short(value)} is invalid: allowed {allowed}")


# Errors are collected, not raised one by one, while a workload is parsed: a file's errors
# are reported together. A field helper that finds a bad value records it and returns a
# placeholder so parsing goes on; the workload built from placeholders is never returned.
_ERRORS: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("slicer_workload_errors", default=None)


@contextlib.contextmanager
def _collecting() -> Iterator[list[str]]:
    errs = _ERRORS.get()
    if errs is not None:  # nested: the outer collector gets them
        yield errs
        return
    errs = []
    token = _ERRORS.set(errs)
    try:
        yield errs
    finally:
        _ERRORS.reset(token)


def _soft(err: WorkloadError, placeholder: Any = None) -> Any:
    """Record ``err`` (or raise it when nothing collects) and go on with ``placeholder``."""
    errs = _ERRORS.get()
    if errs is None:
        raise err
    errs.append(str(err))
    return placeholder


def _field(fn, *args: Any, default: Any = None) -> Any:
    """``fn(*args)``, its ``WorkloadError`` recorded (the field's value is ``default`` then)."""
    try:
        return fn(*args)
    except WorkloadError as e:
        errs = _ERRORS.get()
        if errs is None:
            raise
        errs.extend(e.errors)  # a helper that collected several reports each of them
        return default


def joined(errors: list[str], prefix: str = "") -> str:
    """One message of all ``errors``, at most ``MAX_MESSAGE_CHARS`` long."""
    errors = [e if len(e) <= 400 else e[:397] + "..." for e in errors]
    if len(errors) == 1:
        return prefix + errors[0]
    out = prefix + f"{len(errors)} errors:"
    for i, e in enumerate(errors):
        line = "\n  - " + e
        if len(out) + len(line) > MAX_MESSAGE_CHARS:
            return out + f"\n  ... and {len(errors) - i} more"
        out += line
    return out


@dataclass(frozen=True)
class DeviceGroup:
    """``count`` identical devices of one class."""

    device_class: str
    """Device class (YAML key ``class``): a name from ``slicer.policies.devices``' catalog, and
    the ``device-class`` label of the nodes its actors go to."""
    count: int = spec_field(1, lo=1, hi=256, integer=True)
    """Number of devices in the group (1..256; at most 4096 devices in a workload)."""
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
    link_trace: tuple[tuple[float, float], ...] | str | None = None
    """Emulated rate over time (needs ``emulation.link: true``): rows ``[{t_s: 0,
    rate_mbps: 20}, {t_s: 5, rate_mbps: 1}]`` or a CSV/YAML file of them (relative to the
    workload's folder). Seconds count from the device's first request."""
    requests: int | None = spec_field(None, lo=1, hi=100000, integer=True)
    """Requests per device of this group (1..100000); None: the workload's ``requests``."""
    device: str = spec_field("auto", choices=DEVICES)
    """Where the group's edge actors compute: ``auto`` (CUDA where their node has a GPU,
    else CPU), ``cpu`` or ``cuda`` (placed with ``num_gpus: 1``; a cluster without a GPU
    node is a validation error)."""
    dtype: str | None = spec_field(None, choices=DTYPES)
    """Weights/activations dtype of the group's float fronts: ``float32``, ``bfloat16``,
    ``float16``; None: the workload's ``precision`` (float32 on CPU, the checkpoint's
    dtype on CUDA)."""

    def device_ids(self) -> list[str]:
        prefix = self.name or self.device_class
        return [f"{prefix}-{i}" for i in range(self.count)]


@dataclass(frozen=True)
class InputsSpec:
    """The prompts requests are made of."""

    prompts: tuple[str | tuple[int, ...], ...] = ()
    """Prompts: strings (need the model's tokenizer) or lists of token ids."""
    task_file: str | None = None
    """A file of prompts: ``.jsonl`` with a ``prompt`` (and optional ``answer``) per line,
    or a text file with one prompt per line. Relative to the workload's folder."""


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
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    """The planning policy."""
    codec: CodecConfig | None = None
    """Codec of every feature: a ``CodecConfig`` spec string (``lossless``,
    ``slicer:sparsity=0.75``) or mapping; None (``auto``): the policy chooses."""
    precision: str = spec_field("auto", choices=PRECISIONS)
    """Precision of the edge's front segment: ``auto`` (the plan's), ``float32``,
    ``float16``, ``bfloat16``, ``int8``, ``int4``. ``float32`` with a lossless codec
    reproduces the unsplit model's tokens exactly."""
    mode: str = spec_field("auto", choices=MODES)
    """``auto`` (the plan's mode), ``split`` (per-token split from the first step),
    ``local-then-offload``, ``edge-only`` or ``cloud-only`` (forces that mode)."""
    requests: int = spec_field(2, lo=1, hi=100000, integer=True)
    """Requests per device (1..100000)."""
    max_new_tokens: int = spec_field(8, lo=1, hi=4096, integer=True)
    """Tokens generated per request (greedy; 1..4096)."""
    seed: int = spec_field(0, lo=0, hi=2**32 - 1, integer=True)
    """Seed of everything random: the codec's seed (its rotation and tie-breaks) unless the
    codec spec names one (0..2**32-1)."""
    server: ServerConfig = field(default_factory=ServerConfig)
    """Server limits."""
    base_dir: str = spec_field(".", yaml=False)
    """Folder of the workload file (relative paths resolve against it). Not a YAML field."""

    def all_devices(self) -> list[tuple[str, DeviceGroup]]:
        return [(did, g) for g in self.devices for did in g.device_ids()]

    def device_classes(self) -> list[str]:
        return sorted({g.device_class for g in self.devices})

    def resolve_path(self, p: str) -> Path | None:
        """A path relative to the workload's folder, the cwd or the repo; None if none exists."""
        try:
            cand = Path(p).expanduser()
            if cand.is_absolute():
                return cand if cand.exists() else None
            for root in (Path(self.base_dir), Path.cwd(), REPO_ROOT, REPO_ROOT / "examples"):
                if (root / cand).exists():
                    return (root / cand).resolve()
        except (OSError, ValueError, RuntimeError):  # NUL bytes, ~unknownuser, a name too long
            return None
        return None

    def model_ref(self) -> str:
        """What to pass to ``load_model``: a resolved folder if one exists, else the name."""
        path = self.resolve_path(self.model)
        return str(path) if path is not None else self.model

    def to_dict(self) -> dict[str, Any]:
        """The workload as parsed (``workload.json``): its YAML fields and ``base_dir``;
        the runtime fields of ``server``/``policy`` (``yaml=False``) are left out."""
        d = _yaml_dict(self)
        d["base_dir"] = self.base_dir
        d["codec"] = self.codec.spec() if self.codec is not None else "auto"
        return json.loads(json.dumps(d, default=str))


def _yaml_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _yaml_dict(getattr(obj, f.name)) for f in yaml_fields(type(obj))}
    if isinstance(obj, (list, tuple)):
        return [_yaml_dict(x) for x in obj]
    return obj


# --------------------------------------------------------------------------- parsing


def _spec_values(path: str, d: dict[str, Any], cls: type) -> dict[str, Any]:
    """The values ``d`` gives for the declared fields of ``cls`` (``spec_field``), each
    checked against its declaration (``slicer.actors.fields.check``: never a bool for a
    number, finite, whole for an integer, in range, one of the choices). A bad value is
    recorded and left out, its default standing in, so parsing goes on."""
    out: dict[str, Any] = {}
    for f in yaml_fields(cls):
        if f.name in d and has_spec(f):
            try:
                out[f.name] = check(cls, f.name, d[f.name], f"{path}.{f.name}" if path else f.name)
            except FieldError as e:
                _soft(_bad(e.path, e.value, e.allowed))
    return out


def _section(path: str, raw: Any, cls: type) -> Any:
    """A YAML mapping parsed straight into the config dataclass ``cls`` (every YAML field
    of which is declared with ``spec_field``: one that is not would be accepted, then dropped)."""
    undeclared = [f.name for f in yaml_fields(cls) if not has_spec(f)]
    assert not undeclared, f"{cls.__name__}: fields {undeclared} need spec_field (or yaml=False)"
    return cls(**_spec_values(path, _mapping(path, raw, cls), cls))


def _errors_so_far() -> int:
    return len(_ERRORS.get() or [])


def _mapping(path: str, raw: Any, cls: type) -> dict[str, Any]:
    """Check ``raw`` is a mapping whose keys are YAML fields of ``cls``."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise _bad(path, raw, f"a mapping with fields {_field_names(cls)}")
    names = _field_names(cls)
    for k in raw:
        if k not in names:
            _soft(WorkloadError(f"workload field {path}.{short(k, 40)[1:-1] if isinstance(k, str) else short(k, 40)} "
                                f"is unknown: allowed fields of {path or 'the workload'} are {names}"))
    return {k: v for k, v in raw.items() if k in names}


def _field_names(cls: type) -> list[str]:
    return ["class" if f.name == "device_class" else f.name for f in yaml_fields(cls)]


#: What a link change may change: every YAML field of ``LinkChange`` but its request index.
_LINK_FIGURES = tuple(f.name for f in yaml_fields(LinkChange) if f.name != "at_request")


def _link_change(path: str, raw: Any) -> LinkChange:
    d = _mapping(path, raw, LinkChange)
    if "at_request" not in d:
        raise WorkloadError(f"workload field {path}.at_request is missing: every link change needs one (an integer >= 0)")
    if all(d.get(k) is None for k in _LINK_FIGURES):
        raise WorkloadError(f"workload field {path} changes nothing: give at least one of {', '.join(_LINK_FIGURES)}")
    return LinkChange(**{"at_request": 0, **_spec_values(path, d, LinkChange)})


def _device_group(path: str, raw: Any) -> DeviceGroup:
    d = _mapping(path, raw, DeviceGroup)
    cls = d.get("class")
    if not isinstance(cls, str) or not 0 < len(cls) <= 128 or not all(c.isalnum() or c in "-_." for c in cls):
        raise _bad(f"{path}.class", cls, "a device class name (letters, digits, - _ .), e.g. phone, jetson, laptop")
    name = d.get("name", "")
    if not isinstance(name, str) or len(name) > 128 or not all(c.isalnum() or c in "-_." for c in name):
        raise _bad(f"{path}.name", name, "up to 128 letters, digits, - _ .")
    sched_raw = d.get("link_schedule", []) or []
    if not isinstance(sched_raw, list):
        raise _bad(f"{path}.link_schedule", sched_raw, "a list of {at_request: N, rate_mbps: ...}")
    sched = tuple(_link_change(f"{path}.link_schedule[{i}]", c) for i, c in enumerate(sched_raw))
    return DeviceGroup(
        device_class=cls,
        name=name,
        link=_section(f"{path}.link", d.get("link"), LinkSpec),
        budgets=_section(f"{path}.budgets", d.get("budgets"), BudgetSpec),
        emulation=_section(f"{path}.emulation", d.get("emulation"), EmulationSpec),
        link_schedule=tuple(sorted(sched, key=lambda c: c.at_request)),
        link_trace=_link_trace(f"{path}.link_trace", d.get("link_trace"), d.get("emulation")),
        **_spec_values(path, d, DeviceGroup),  # count, requests, device, dtype
    )


def _link_trace(path: str, raw: Any, emulation: Any) -> tuple[tuple[float, float], ...] | str | None:
    if raw is None:
        return None
    if not (isinstance(emulation, dict) and emulation.get("link") is True):
        raise WorkloadError(f"workload field {path} needs emulation.link: true (a rate trace is emulated)")
    if isinstance(raw, str):
        if not _path_ok(raw):
            raise _bad(path, raw, "a path (a string of 1..4096 characters, no NUL) or a list of {t_s, rate_mbps}")
        return raw
    from slicer.policies.link import RateTrace

    try:
        t = RateTrace.from_rows(raw)
    except ValueError as e:
        raise WorkloadError(f"workload field {path} is invalid: {e}") from None
    return tuple(zip(t.times_s, t.rates_mbps))


def _inputs(path: str, raw: Any) -> InputsSpec:
    if isinstance(raw, list):
        raw = {"prompts": raw}
    d = _mapping(path, raw, InputsSpec)
    prompts_raw = d.get("prompts", []) or []
    if not isinstance(prompts_raw, list):
        raise _bad(f"{path}.prompts", prompts_raw, "a list of strings or of lists of token ids")
    prompts: list[str | tuple[int, ...]] = []
    for i, p in enumerate(prompts_raw):
        ok = _prompt_ok(p)
        if ok is None:
            prompts.append(tuple(p) if isinstance(p, list) else p)
        else:
            _soft(_bad(f"{path}.prompts[{i}]", p, ok))
    task_file = d.get("task_file")
    if task_file is not None and not _path_ok(task_file):
        task_file = _soft(_bad(f"{path}.task_file", task_file, "a path (a string of 1..4096 characters, no NUL)"))
    return InputsSpec(prompts=tuple(prompts), task_file=task_file)


def _prompt_ok(p: Any) -> str | None:
    """None for a good prompt, else what is allowed."""
    allowed = f"a non-empty string or a non-empty list of token ids (integers 0..2**31-1), at most {MAX_PROMPT_LEN} long"
    if isinstance(p, str):
        return None if 0 < len(p) <= MAX_PROMPT_LEN else allowed
    if isinstance(p, list) and 0 < len(p) <= MAX_PROMPT_LEN and all(
            isinstance(t, int) and not isinstance(t, bool) and 0 <= t < 2**31 for t in p):
        return None
    return allowed


def _path_ok(p: Any) -> bool:
    return isinstance(p, str) and 0 < len(p) <= 4096 and "\0" not in p


def _policy(path: str, raw: Any) -> PolicyConfig:
    if isinstance(raw, str):  # `policy: slicer`
        try:
            return PolicyConfig(name=check(PolicyConfig, "name", raw, path))
        except FieldError as e:
            raise _bad(e.path, e.value, e.allowed) from None
    before = _errors_so_far()
    cfg = _section(path, raw, PolicyConfig)
    if _errors_so_far() > before:  # a bad field: its default would make the rules below misfire
        return cfg
    if cfg.name == "fixed" and cfg.split is None:
        raise WorkloadError(f"workload field {path}.split is missing: policy 'fixed' needs a split layer (an integer >= 0)")
    if cfg.name != "fixed" and (cfg.split is not None or cfg.offload_step is not None):
        raise WorkloadError(f"workload fields {path}.split/offload_step are only allowed with policy 'fixed', not {cfg.name!r}")
    return cfg


def _codec(path: str, raw: Any) -> CodecConfig | None:
    if raw is None or raw == "auto":
        return None
    if isinstance(raw, (str, dict)):
        from slicer.codec import (  # torch: only for a workload that names a codec
            CodecConfig,
            CodecError,
        )

        try:
            if isinstance(raw, str):
                return CodecConfig.parse(raw)
            return CodecConfig(**raw)
        except (TypeError, ValueError, AttributeError, OverflowError, CodecError) as e:
            raise WorkloadError(f"workload field {path}={short(raw)} is invalid: {str(e)[:300]}") from None
    raise _bad(path, raw, "'auto', a codec spec string (e.g. lossless, slicer:sparsity=0.75) or a mapping of CodecConfig fields")


def parse_workload(raw: Any, base_dir: str | Path = ".") -> Workload:
    """Validate a parsed YAML document into a ``Workload``; a ``WorkloadError`` carries
    every error found (``.errors``), not only the first."""
    with _collecting() as errs:
        wl = _parse(raw, base_dir)
    if _ERRORS.get() is None and errs:  # outermost: raise them all together
        raise WorkloadError(joined(errs), errs)
    return wl


def _name(v: Any) -> str:
    if not isinstance(v, str) or not 0 < len(v) <= 128 or not all(c.isalnum() or c in "-_." for c in v):
        raise _bad("name", v, "a name of 1..128 letters, digits, - _ .")
    return v


def _model(v: Any) -> str:
    if not _path_ok(v):
        raise _bad("model", v, "a model folder or name (a string of 1..4096 characters)")
    return v


def _devices(v: Any) -> tuple[DeviceGroup, ...]:
    if not isinstance(v, list) or not v:
        raise _bad("devices", v, "a non-empty list of device groups {class: ..., count: ...}")
    groups = tuple(g for g in (_field(_device_group, f"devices[{i}]", raw) for i, raw in enumerate(v)) if g is not None)
    if sum(g.count for g in groups) > MAX_DEVICES:
        raise _bad("devices", v, f"at most {MAX_DEVICES} devices in all")
    ids = [did for g in groups for did in g.device_ids()]
    seen: set[str] = set()
    dup = sorted({i for i in ids if i in seen or seen.add(i)})
    if dup:
        raise WorkloadError(f"workload field devices gives duplicate device ids {dup[:5]}: set a distinct `name` per group")
    return groups


def _parse(raw: Any, base_dir: str | Path) -> Workload:
    if not isinstance(raw, dict):
        raise WorkloadError(f"a workload is a mapping of fields {_field_names(Workload)}, got {type(raw).__name__}")
    d = _mapping("", raw, Workload)
    for req in ("model", "devices"):
        if req not in d:
            _soft(WorkloadError(f"workload field {req} is missing (required)"))
    wl = Workload(
        name=_field(_name, d.get("name", Path(str(base_dir)).name or "run"), default="run"),
        model=_field(_model, d.get("model", "?"), default="?"),
        devices=_field(_devices, d.get("devices", [{"class": "x"}]), default=()),
        inputs=_field(_inputs, "inputs", d.get("inputs"), default=InputsSpec()),
        policy=_field(_policy, "policy", d.get("policy", "slicer"), default=PolicyConfig()),
        codec=_field(_codec, "codec", d.get("codec"), default=None),
        server=_field(_section, "server", d.get("server"), ServerConfig, default=ServerConfig()),
        base_dir=str(base_dir),
        **_spec_values("", d, Workload),  # precision, mode, requests, max_new_tokens, seed
    )
    if wl.codec is not None and wl.codec.method != "raw" and not _names_seed(d.get("codec")):
        # the workload's seed is the codec's seed (rotation, tie-breaks) unless the spec names one
        wl = dataclasses.replace(wl, codec=dataclasses.replace(wl.codec, seed=wl.seed))
    if not wl.inputs.prompts and wl.inputs.task_file is None and "inputs" not in _bad_fields():
        _soft(WorkloadError("workload field inputs is empty: give inputs.prompts (a list) or inputs.task_file"))
    if wl.inputs.task_file is not None and wl.resolve_path(wl.inputs.task_file) is None:
        _soft(_bad("inputs.task_file", wl.inputs.task_file, f"an existing file (looked in {str(wl.base_dir)[:200]}, "
                   "the cwd and the repo)"))
    return wl


def _names_seed(raw: Any) -> bool:
    """Does a codec spec (string ``method:k=v,...`` or mapping) name its own seed?"""
    if isinstance(raw, dict):
        return "seed" in raw
    return isinstance(raw, str) and "seed" in {kv.split("=")[0].strip() for kv in raw.partition(":")[2].split(",")}


def _bad_fields() -> str:
    """The errors recorded so far, as one string (to skip follow-on errors)."""
    return " ".join(_ERRORS.get() or [])


#: A Hugging Face repo id (``name`` or ``namespace/name``).
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}(/[A-Za-z0-9][A-Za-z0-9_.-]{0,95})?$")


def check_model_path(wl: Workload) -> None:
    """The model must be a readable model folder (``config.json``), or a name that needs
    no path: a one-part name (the shipped configs, ``slicer.actors.models``) or a
    ``namespace/name`` repo already in the local Hugging Face cache. Checked from the file
    system only (no torch, no network), so a bad path fails in milliseconds."""
    m = wl.model
    p = wl.resolve_path(m)
    where = f"looked in {str(wl.base_dir)[:200]}, the cwd and the repo"
    if p is not None:
        if not p.is_dir():
            raise _bad("model", m, f"a model folder (one holding config.json) or a model name; {str(p)[:200]} is a file")
        cfg = p / "config.json"
        try:
            with open(cfg, "rb") as f:
                f.read(1)
        except OSError as e:
            raise _bad("model", m, f"a model folder holding a readable config.json; {str(cfg)[:200]}: "
                       f"{e.strerror or type(e).__name__}") from None
        return
    if not _HUB_ID.match(m) or ".." in m or "--" in m:
        raise _bad("model", m, f"an existing model folder ({where}) or a model name; no such folder")
    if "/" in m:
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(m, "config.json")
        except Exception:  # noqa: BLE001 (no hub library or an unreadable cache: not cached)
            cached = None
        if not isinstance(cached, str):
            raise _bad("model", m, f"an existing model folder ({where}) or a Hugging Face repo in the local cache: "
                       f"neither found (download it first: huggingface-cli download {m})")


def load_workload(path: str | Path) -> Workload:
    """Read and validate a workload YAML file (``slicer.orchestrator.yamlload``: size cap,
    UTF-8, no aliases, no duplicate keys, bounded nesting), then the files it names: the
    model path and the task file. Every error of the file comes in one ``WorkloadError``
    whose message names the file."""
    p = Path(path)
    prefix = f"workload file {str(p)[:200]!r}: "
    try:
        raw = load_yaml_file(p, "workload file")
    except YamlFileError as e:
        raise WorkloadError(str(e)) from None
    with _collecting() as errs:
        try:
            wl = _parse(raw, base_dir=p.resolve().parent)
        except WorkloadError as e:
            raise WorkloadError(prefix + str(e)) from None
        if "workload field model" not in _bad_fields():
            _field(check_model_path, wl)
        if wl.inputs.task_file is not None and "inputs" not in _bad_fields():
            _field(load_prompts, wl)
    if errs:
        raise WorkloadError(joined(errs, prefix), errs)
    return wl


def load_prompts(wl: Workload) -> list[dict[str, Any]]:
    """The workload's prompts as ``{"prompt": str | list[int], "answer": ...}`` records.
    The task file is read with a size cap (``MAX_TASK_FILE_BYTES``, regular files only)
    and every line is checked (JSON, a ``prompt`` that is a string or token ids); its
    errors come together, each naming the line."""
    out: list[dict[str, Any]] = [{"prompt": list(p) if isinstance(p, tuple) else p} for p in wl.inputs.prompts]
    if wl.inputs.task_file is not None:
        path = wl.resolve_path(wl.inputs.task_file)
        if path is None:
            raise _bad("inputs.task_file", wl.inputs.task_file, "an existing file")
        what = f"inputs.task_file {wl.inputs.task_file[:200]!r}"
        try:
            text = decode_utf8(read_capped(path, MAX_TASK_FILE_BYTES, "inputs.task_file"), path, "inputs.task_file")
        except YamlFileError as e:
            raise WorkloadError(str(e)) from None
        errs: list[str] = []
        if path.suffix == ".jsonl":
            for i, line in enumerate(text.splitlines()):
                if len(errs) >= 20:
                    break
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except (ValueError, RecursionError) as e:  # RecursionError: deeply nested JSON
                    errs.append(f"{what} line {i + 1} is not JSON: {str(e)[:120]}")
                    continue
                bad = "has no 'prompt' field" if not isinstance(rec, dict) or "prompt" not in rec else None
                if bad is None and _prompt_ok(rec["prompt"]) is not None:
                    bad = f"field prompt={short(rec['prompt'])} is invalid: allowed {_prompt_ok(rec['prompt'])}"
                if bad:
                    errs.append(f"{what} line {i + 1} {bad}")
                    continue
                out.append(rec)
        else:
            for i, ln in enumerate(text.splitlines()):
                if len(ln) > MAX_PROMPT_LEN:
                    errs.append(f"{what} line {i + 1} holds {len(ln)} characters: allowed at most {MAX_PROMPT_LEN}")
                elif ln.strip():
                    out.append({"prompt": ln})
        if errs:
            raise WorkloadError(joined(errs), errs)
    if not out:
        raise WorkloadError("workload inputs hold no prompt")
    return out
