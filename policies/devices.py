"""Device profiles: how long a unit of a model takes on a device, and how much memory it has.

Two kinds:

- **analytic** (``policies/devices.yaml``, or a user's YAML via ``load_device_catalog``):
  vendor peaks and a roofline, ``max(FLOPs / throughput, bytes / bandwidth) + overhead``
  per unit. For devices nobody here has (a Jetson, a phone, an H100).
- **measured** (``slicer profile``): per-unit seconds per decode step at a few context
  lengths, timed on this machine, plus a codec time table; cached as JSON under
  ``~/.cache/slicer/profiles/<model>-<device>-<dtype>-v1.json`` (Petals-style: keyed by
  model, device, dtype, with the format version in the name).
"""
from __future__ import annotations

import bisect
import dataclasses
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from slicer.policies.profile import LayerProfile, ModelProfile
from slicer.policies.schema import PRECISION_BYTES, canonical_precision

PROFILE_VERSION = 1
CATALOG_PATH = Path(__file__).with_name("devices.yaml")

#: Which peak a precision's matmuls run at. Weight-only int4 dequantizes to fp16 and
#: multiplies there (llama.cpp, AWQ/GPTQ kernels); int8 uses int8 units when the device
#: lists them.
_COMPUTE_AT = {"float32": "float32", "float16": "float16", "bfloat16": "float16", "int8": "int8", "int4": "float16"}


@dataclass(frozen=True)
class MeasuredTimings:
    """Per-unit decode timings measured on one machine for one model and dtype."""

    contexts: tuple[int, ...]
    """Context lengths the decode step was timed at (ascending)."""
    unit_s: tuple[tuple[float, ...], ...]
    """``unit_s[i][j]``: median seconds of unit ``j`` for one decode token at ``contexts[i]``."""
    prefill_tokens: int = 0
    """Tokens of the timed prefill (0: none timed)."""
    prefill_unit_s: tuple[float, ...] = ()
    """Median seconds of each unit for a prefill of ``prefill_tokens`` tokens."""
    codec: tuple[tuple[str, int, float], ...] = ()
    """Codec time table: ``(codec spec, elements, median seconds of encode)``."""
    codec_decode: tuple[tuple[str, int, float], ...] = ()
    """Same for decode (the server's side)."""
    call_overhead_s: float = 0.0
    """Extra seconds of a segment that starts after unit 0 (a separate call: masks,
    position embeddings, dispatch). Prefixes [0, ℓ) include theirs in the unit times."""
    codec_stages: Mapping[str, Any] | None = None
    """ζ̂ per stage fitted on this machine (``StageCoefficients.to_dict()``, see
    ``policies.codectime``); None in profiles measured before stages were timed."""

    def unit_time_s(self, j: int, context: int, tokens: int = 1) -> float:
        """Seconds of unit ``j`` for ``tokens`` new tokens at ``context``: linear in the
        context between the measured points (attention cost is linear in it), clamped
        extrapolation beyond; several tokens scale from the prefill timing when present."""
        per_token = _interp(self.contexts, [row[j] for row in self.unit_s], context)
        if tokens <= 1:
            return per_token
        if self.prefill_tokens and self.prefill_unit_s:
            # Batched tokens amortise per-step overhead: scale the measured prefill.
            return self.prefill_unit_s[j] * tokens / self.prefill_tokens
        return per_token * tokens

    def codec_time_s(self, spec: str, elements: int, decode: bool = False, same_method: bool = True) -> float | None:
        """Encode (or decode) seconds for ``elements`` with the codec ``spec``: a line
        through the measured points of that spec (time = a + b · elements); specs not
        measured use the measured specs of the same method (their mean line) when
        ``same_method``; None when none applies."""
        table = self.codec_decode if decode else self.codec
        rows = [(n, t) for s, n, t in table if s == spec]
        if not rows and same_method:
            method = spec.partition(":")[0]
            rows = [(n, t) for s, n, t in table if s.partition(":")[0] == method]
        if not rows:
            return None
        by_n: dict[int, list[float]] = {}
        for n, t in rows:
            by_n.setdefault(n, []).append(t)
        pts = sorted((n, sum(ts) / len(ts)) for n, ts in by_n.items())
        if len(pts) == 1:
            n, t = pts[0]
            return t * max(elements, 1) / max(n, 1)
        return max(0.0, _interp([n for n, _ in pts], [t for _, t in pts], elements, extrapolate=True))


def _interp(xs, ys, x: float, extrapolate: bool = False) -> float:
    """Piecewise-linear interpolation; beyond the last point the last segment's slope
    continues (attention cost is linear in the context); below the first point the first
    value holds unless ``extrapolate``."""
    xs, ys = list(xs), list(ys)
    if len(xs) == 1:
        return ys[0]
    if x <= xs[0] and not extrapolate:
        return ys[0]
    i = min(max(bisect.bisect_left(xs, x), 1), len(xs) - 1)
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    if x1 == x0:
        return y1
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


@dataclass(frozen=True)
class DeviceProfile:
    """One device class: memory, throughput, bandwidth (analytic) or timings (measured)."""

    name: str
    """Device class, e.g. ``jetson-orin-agx``; the key users pass to ``slicer plan --device``."""
    memory_bytes: float
    """Total device memory in bytes (the planner's default memory budget)."""
    memory_bandwidth_bps: float
    """Peak DRAM bandwidth in bytes/s."""
    peak_flops: Mapping[str, float]
    """Peak FLOP/s per compute precision (``float32``, ``float16``, ``int8``)."""
    compute_efficiency: float = 0.4
    """Fraction of ``peak_flops`` a real model layer reaches (0, 1]."""
    bandwidth_efficiency: float = 0.6
    """Fraction of ``memory_bandwidth_bps`` a real model layer reaches (0, 1]."""
    launch_overhead_s: float = 0.0
    """Fixed seconds per unit per step (kernel launches, framework dispatch)."""
    codec_passes: float = 16.0
    """Analytic codec time: the encoder reads the float32 feature this many times."""
    description: str = ""
    kind: str = "analytic"
    """``analytic`` (roofline) or ``measured`` (``measured`` timings)."""
    measured: MeasuredTimings | None = None
    """Timings of one model on this machine (``kind == "measured"``)."""
    measured_model: str = ""
    """Model the timings belong to (a measured profile predicts that model only)."""
    measured_dtype: str = ""
    """Dtype the timings were taken at."""
    slowdown: float = 1.0
    """Emulation: multiply every predicted time by this (a slower device class on this CPU)."""

    def __post_init__(self) -> None:
        def need(name: str, ok: bool, allowed: str) -> None:
            if not ok:
                raise ValueError(f"device {self.name!r}: field {name}={getattr(self, name)!r} is invalid: allowed {allowed}")

        need("memory_bytes", _posnum(self.memory_bytes), "a number > 0 (bytes)")
        need("memory_bandwidth_bps", _posnum(self.memory_bandwidth_bps), "a number > 0 (bytes/s)")
        need("peak_flops", isinstance(self.peak_flops, Mapping) and len(self.peak_flops) > 0
             and all(k in ("float32", "float16", "int8") and _posnum(v) for k, v in self.peak_flops.items()),
             "a mapping of float32/float16/int8 to FLOP/s > 0")
        need("compute_efficiency", _posnum(self.compute_efficiency) and self.compute_efficiency <= 1, "a number in (0, 1]")
        need("bandwidth_efficiency", _posnum(self.bandwidth_efficiency) and self.bandwidth_efficiency <= 1, "a number in (0, 1]")
        need("launch_overhead_s", isinstance(self.launch_overhead_s, (int, float)) and self.launch_overhead_s >= 0, "a number >= 0 (s)")
        need("codec_passes", _posnum(self.codec_passes), "a number > 0")
        need("kind", self.kind in ("analytic", "measured"), "analytic or measured")
        need("slowdown", _posnum(self.slowdown), "a number > 0")
        if self.kind == "measured":
            need("measured", isinstance(self.measured, MeasuredTimings), "MeasuredTimings for a measured profile")

    # -- compute ------------------------------------------------------------------------

    def flops_rate(self, precision: str) -> float:
        """Sustained FLOP/s for matmuls whose weights are at ``precision``."""
        at = _COMPUTE_AT[canonical_precision(precision)]
        peak = self.peak_flops.get(at) or self.peak_flops.get("float16") or self.peak_flops.get("float32")
        return peak * self.compute_efficiency

    def bandwidth(self) -> float:
        return self.memory_bandwidth_bps * self.bandwidth_efficiency

    def unit_time_s(self, model: ModelProfile, j: int, precision: str, context: int, tokens: int = 1) -> float:
        """Seconds for unit ``j`` to process ``tokens`` new tokens with ``context`` tokens
        already cached (decode: tokens = 1; prefill: tokens = prompt, context = 0)."""
        layer = model.layers[j]
        if self.kind == "measured" and self.measured is not None and self._measures(model):
            t = self.measured.unit_time_s(j, context, tokens)
            # Other precisions than the measured one: decode is bandwidth-bound, scale by bytes.
            ratio = PRECISION_BYTES[canonical_precision(precision)] / PRECISION_BYTES[canonical_precision(self.measured_dtype or model.dtype)]
            return t * (ratio if ratio < 1 else 1.0) * self.slowdown
        return roofline_s(self, layer, model, precision, context, tokens) * self.slowdown

    def segment_overhead_s(self, model: ModelProfile, a: int) -> float:
        """Fixed cost of running a segment that starts at unit ``a`` as its own call."""
        if a > 0 and self.kind == "measured" and self.measured is not None and self._measures(model):
            return self.measured.call_overhead_s * self.slowdown
        return 0.0

    def _measures(self, model: ModelProfile) -> bool:
        return self.measured is not None and len(self.measured.unit_s[0]) == model.num_layers

    def codec_time_s(self, elements: int, spec: str = "", decode: bool = False) -> float:
        """Encode (decode) time of a float32 feature of ``elements`` on this device:
        measured table when this profile has the spec, else ``codec_passes`` reads of
        the tensor at sustained bandwidth plus one launch overhead."""
        if self.measured is not None and spec:
            t = self.measured.codec_time_s(spec, elements, decode)
            if t is not None:
                return t * self.slowdown
        passes = self.codec_passes if spec not in ("", "lossless") else 1.0
        return (elements * 4.0 * passes / self.bandwidth() + self.launch_overhead_s) * self.slowdown

    def replace(self, **changes: Any) -> DeviceProfile:
        return dataclasses.replace(self, **changes)

    # -- (de)serialisation --------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["peak_flops"] = dict(self.peak_flops)
        return d

    @classmethod
    def from_dict(cls, name: str, d: Mapping[str, Any]) -> DeviceProfile:
        """Build from a YAML/JSON mapping; unknown or missing fields raise ValueError
        naming the field and the device."""
        if not isinstance(d, Mapping):
            raise ValueError(f"device {name!r}: expected a mapping of fields, got {type(d).__name__}")  # noqa: TRY004 - a config error, like every other one here
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"device {name!r}: unknown field(s) {unknown}; allowed {sorted(names - {'name'})}")
        for req in ("memory_bytes", "memory_bandwidth_bps", "peak_flops"):
            if req not in d:
                raise ValueError(f"device {name!r}: missing required field {req!r}")
        kw = dict(d)
        kw["name"] = kw.get("name", name)
        for k in ("memory_bytes", "memory_bandwidth_bps", "compute_efficiency", "bandwidth_efficiency",
                  "launch_overhead_s", "codec_passes", "slowdown"):
            if k in kw:
                kw[k] = _number(name, k, kw[k])
        if isinstance(kw.get("peak_flops"), Mapping):
            kw["peak_flops"] = {str(k): _number(name, f"peak_flops.{k}", v) for k, v in kw["peak_flops"].items()}
        if kw.get("measured") is not None and not isinstance(kw["measured"], MeasuredTimings):
            m = dict(kw["measured"])
            kw["measured"] = MeasuredTimings(
                contexts=tuple(int(c) for c in m["contexts"]),
                unit_s=tuple(tuple(float(t) for t in row) for row in m["unit_s"]),
                prefill_tokens=int(m.get("prefill_tokens", 0)),
                prefill_unit_s=tuple(float(t) for t in m.get("prefill_unit_s", ())),
                codec=tuple((str(s), int(n), float(t)) for s, n, t in m.get("codec", ())),
                codec_decode=tuple((str(s), int(n), float(t)) for s, n, t in m.get("codec_decode", ())),
                call_overhead_s=float(m.get("call_overhead_s", 0.0)),
                codec_stages=_stages(name, m.get("codec_stages")),
            )
        return cls(**kw)


def _stages(device: str, d: Any) -> dict | None:
    """A measured ``codec_stages`` mapping, validated (ValueError naming the device)."""
    if d is None:
        return None
    from slicer.policies.codectime import StageCoefficients

    try:
        return StageCoefficients.from_dict(d).to_dict()
    except ValueError as e:
        raise ValueError(f"device {device!r}: measured.{e} (a profile of another layout: re-run slicer profile)") from None


def stage_coefficients(dev: DeviceProfile):
    """ζ̂'s stage coefficients of ``dev``: fitted on the host by ``slicer profile`` when its
    measured profile has them, else from its roofline (bandwidth, launch overhead)."""
    from slicer.policies.codectime import StageCoefficients, roofline_coefficients

    if dev.measured is not None and dev.measured.codec_stages is not None:
        return StageCoefficients.from_dict(dev.measured.codec_stages)
    return roofline_coefficients(dev.bandwidth(), dev.launch_overhead_s)


def _posnum(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 and math.isfinite(v)


def _number(device: str, fieldname: str, v: Any) -> float:
    # YAML reads "8e9" (no dot) as a string; accept it, refuse anything else by name.
    try:
        return float(v)
    except (TypeError, ValueError):
        raise ValueError(f"device {device!r}: field {fieldname}={v!r} is not a number") from None


def layer_param_bytes(layer: LayerProfile, precision: str) -> float:
    """Bytes of a unit's weights at ``precision`` (norms and embeddings are quantized too;
    a small overestimate for int formats is the safe side for a memory budget)."""
    return layer.num_params * PRECISION_BYTES[canonical_precision(precision)]


def roofline_s(dev: DeviceProfile, layer: LayerProfile, model: ModelProfile, precision: str,
               context: int, tokens: int = 1) -> float:
    """max(FLOPs / sustained FLOP/s, bytes moved / sustained bandwidth) + overhead.

    Bytes moved per step: the unit's weights once (a decode step reads every weight), its
    KV cache over the context (kv bytes refer to the profile's dtype), and the activations
    in and out (float32 per element, small)."""
    flops = tokens * (layer.flops_per_token + (context + (tokens + 1) / 2) * layer.attn_flops_per_token_per_ctx)
    if layer.name.startswith("embed") and layer.flops_per_token == 0:
        weight_bytes = tokens * layer.num_params / max(1, model.vocab_size) * PRECISION_BYTES[canonical_precision(precision)]
    else:
        weight_bytes = layer_param_bytes(layer, precision)
    moved = weight_bytes + (context + tokens) * layer.kv_bytes_per_token + 2 * tokens * layer.out_elements * 4
    return max(flops / dev.flops_rate(precision), moved / dev.bandwidth()) + dev.launch_overhead_s


# -- catalog --------------------------------------------------------------------------------

def load_device_catalog(path: str | os.PathLike | None = None) -> dict[str, DeviceProfile]:
    """Device classes from a YAML file (``name: {fields}``); the shipped catalog when
    ``path`` is None. Every entry is validated; errors name the device and the field."""
    p = Path(path) if path is not None else CATALOG_PATH
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ValueError(f"device catalog {p}: not valid YAML: {e}") from None
    if not isinstance(data, Mapping):
        raise ValueError(f"device catalog {p}: expected a mapping of device name -> fields")  # noqa: TRY004 - a config error
    return {str(name): DeviceProfile.from_dict(str(name), fields) for name, fields in data.items()}


def get_device(name: str, catalog_path: str | os.PathLike | None = None) -> DeviceProfile:
    """A device class by name from the shipped catalog plus ``catalog_path`` (user entries
    override shipped ones), or a measured profile JSON file path."""
    if name.endswith(".json") and Path(name).exists():
        return load_measured(name)[1]
    cat = load_device_catalog()
    if catalog_path is not None:
        cat.update(load_device_catalog(catalog_path))
    if name not in cat:
        raise ValueError(f"device {name!r} is unknown: allowed {', '.join(sorted(cat))}, a profile .json, "
                         f"or your own YAML via --devices")
    return cat[name]


# -- measured profile cache -----------------------------------------------------------------

def cache_dir() -> Path:
    return Path(os.environ.get("SLICER_CACHE", Path.home() / ".cache" / "slicer")) / "profiles"


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._]+", "_", s).strip("_") or "model"


def measured_path(model: str, device: str, dtype: str, root: Path | None = None) -> Path:
    """``<root>/<model>-<device>-<dtype>-v1.json`` (names made file-safe)."""
    root = root or cache_dir()
    return root / f"{_slug(model)}-{_slug(device)}-{_slug(dtype)}-v{PROFILE_VERSION}.json"


def save_measured(path: str | os.PathLike, model: ModelProfile, device: DeviceProfile) -> Path:
    """Write a measured (model profile, device profile) pair as one JSON file."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    doc = {"version": PROFILE_VERSION, "model": json.loads(model.to_json()), "device": device.to_dict()}
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1), encoding="utf-8")
    tmp.replace(p)
    return p


def load_measured(path: str | os.PathLike) -> tuple[ModelProfile, DeviceProfile]:
    p = Path(path)
    doc = json.loads(p.read_text(encoding="utf-8"))
    if doc.get("version") != PROFILE_VERSION:
        raise ValueError(f"profile {p}: version {doc.get('version')!r}, this slicer reads {PROFILE_VERSION}; re-run slicer profile")
    model = ModelProfile.from_json(json.dumps(doc["model"]))
    dev = dict(doc["device"])
    return model, DeviceProfile.from_dict(dev.get("name", "measured"), dev)
