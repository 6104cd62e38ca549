"""ζ̂ per stage (t_ATKF + t_MS + Σ t_ABQ + packing): roofline for catalog devices, a fit
from `slicer profile` timings on the host, and its use by the search."""
import dataclasses
import math

import pytest
from policy_helpers import toy_llm

from slicer.codec import CodecConfig
from slicer.policies import Budgets, DeviceProfile, LinkState, SearchSpace, get_device, plan
from slicer.policies.codectime import (
    STAGES,
    StageCoefficients,
    counts,
    features,
    fit_stage_coefficients,
    roofline_coefficients,
)
from slicer.policies.devices import MeasuredTimings, stage_coefficients
from slicer.policies.models import default_codec_time

SHAPE = (64, 4096)


def cfg(s=0.5, blocks=(3, 3), lam=0.0, delta=0.01):
    return CodecConfig(method="slicer", sparsity=s, blocks=blocks, asymmetry=lam, delta=delta)


def test_roofline_stages_follow_the_knobs():
    coef = roofline_coefficients(100e9, 10e-6)
    base = coef.stage_s(SHAPE, cfg())
    assert all(base[s] > 0 for s in STAGES)
    sparser = coef.stage_s(SHAPE, cfg(s=0.9))
    assert sparser["ms"] < base["ms"] and sparser["abq"] < base["abq"] and sparser["atkf"] == base["atkf"]
    assert coef.stage_s(SHAPE, cfg(s=0.0))["atkf"] < base["atkf"]  # s = 0 keeps all: nothing to select
    assert coef.stage_s(SHAPE, cfg(lam=0.2))["atkf"] > base["atkf"]  # λ > 0: one more scoring pass
    assert coef.stage_s(SHAPE, cfg(delta=None))["abq"] < base["abq"]  # fixed bits: no width pass
    assert coef.encode_s(SHAPE, cfg()) == pytest.approx(base["atkf"] + base["ms"] + base["abq"] + base["pack"])
    # A catalog device's ζ̂ is its roofline, scaled by its emulation slowdown.
    orin = get_device("jetson-orin-agx")
    t = default_codec_time(SHAPE, cfg(), orin)
    assert t == pytest.approx(stage_coefficients(orin).encode_s(SHAPE, cfg()))
    assert default_codec_time(SHAPE, cfg(), orin.replace(slowdown=3.0)) == pytest.approx(3 * t)
    assert default_codec_time(SHAPE, None, orin) == 0.0


def test_fit_recovers_known_coefficients():
    truth = StageCoefficients(atkf=(1e-5, 1e-9, 2e-9, 1e-9), ms=(3e-6, 5e-9, 2e-5), abq=(4e-6, 3e-9),
                              pack=(2e-5, 1e-10, 2e-9), decode=(5e-5, 1e-9, 6e-9), source="fit")
    rows = []
    for n in (4096, 65536, 262144):
        for c in (cfg(0.0, (1, 1)), cfg(0.5, (3, 3)), cfg(0.9, (8, 8), 0.2), cfg(0.25, (2, 1), 0.2, None)):
            cnt = counts((n,), c)
            rows.append({**cnt, **{s: sum(a * x for a, x in zip(getattr(truth, s), features(s, cnt))) for s in STAGES}})
    fit = fit_stage_coefficients(rows)
    for s in STAGES:
        assert getattr(fit, s) == pytest.approx(getattr(truth, s), rel=1e-3, abs=1e-12)
    with pytest.raises(ValueError, match=">= 4 timed rows"):
        fit_stage_coefficients(rows[:2])


def test_fit_from_timed_reference_stages():
    """The host's stages timed by `slicer profile`'s routine: the fit is non-negative and
    orders settings as the timings do (the sparsest setting encodes fastest)."""
    from slicer.orchestrator.profiler import time_codec_stages

    points = [(n, s, m, lam, fixed) for n in (4096, 65536) for s, m, lam, fixed in
              ((0.0, (1, 1), 0.0, False), (0.9, (8, 8), 0.2, False), (0.5, (2, 1), 0.0, True))]
    rows = time_codec_stages(points, reps=3)
    assert len(rows) == 6 and all(r[s] > 0 for r in rows for s in STAGES)
    fit = fit_stage_coefficients(rows)
    assert fit.source == "fit"
    big = 65536
    assert fit.encode_s((big,), cfg(0.9, (1, 1))) < fit.encode_s((big,), cfg(0.0, (1, 1)))
    assert fit.encode_s((big,), cfg(0.5)) > 0


def test_bad_stage_tables_are_refused():
    good = roofline_coefficients(1e9, 0.0).to_dict()
    with pytest.raises(ValueError, match="missing"):
        StageCoefficients.from_dict({k: v for k, v in good.items() if k != "ms"})
    with pytest.raises(ValueError, match="unknown key"):
        StageCoefficients.from_dict({**good, "evil": [1]})
    with pytest.raises(ValueError, match=r"StageCoefficients.atkf=.* is invalid"):
        StageCoefficients.from_dict({**good, "atkf": [-1.0, 0.0, 0.0, 0.0]})
    with pytest.raises(ValueError, match=r"StageCoefficients.atkf=.* is invalid"):
        StageCoefficients.from_dict({**good, "atkf": [0.0, 0.0, 0.0]})  # a profile of an older layout
    with pytest.raises(ValueError, match="is invalid"):
        StageCoefficients.from_dict({**good, "abq": [float("nan"), 0.0]})
    with pytest.raises(ValueError, match="list of numbers"):
        StageCoefficients.from_dict({**good, "pack": ["x", 1, 2]})
    with pytest.raises(ValueError, match="device 'dev': measured.codec_stages"):
        DeviceProfile.from_dict("dev", {"memory_bytes": 1e9, "memory_bandwidth_bps": 1e9, "peak_flops": {"float32": 1e9},
                                        "kind": "measured",
                                        "measured": {"contexts": [0], "unit_s": [[0.001]], "codec_stages": {"atkf": []}}})
    with pytest.raises(ValueError, match="bandwidth > 0"):
        roofline_coefficients(0.0, 0.0)


def _measured(stages: StageCoefficients, model) -> DeviceProfile:
    n = model.num_layers
    m = MeasuredTimings(contexts=(0, 256), unit_s=((0.001,) * n, (0.001,) * n), codec_stages=stages.to_dict())
    return DeviceProfile(name="host", memory_bytes=1e9, memory_bandwidth_bps=1e9, peak_flops={"float32": 1e9},
                         kind="measured", measured=m, measured_model=model.name, measured_dtype=model.dtype)


def test_the_search_pays_for_blocks_the_host_makes_expensive(monkeypatch):
    """With a fitted t_MS that charges 2 ms per block, the search takes fewer blocks (and
    no deeper split) under a budget the finest blocks would miss; with free blocks it takes
    the finest. The
    planner never measures: the codec's own timing model is not consulted."""
    from slicer.codec import ratemodel

    monkeypatch.setattr(ratemodel, "predict_time_s", lambda *a, **k: pytest.fail("the planner measured"))
    monkeypatch.setattr(ratemodel, "fit_time_model", lambda *a, **k: pytest.fail("the planner measured"))
    model = toy_llm(n_blocks=8, hidden=256, block_params=1_000_000)
    cheap = roofline_coefficients(1e12, 0.0)
    costly = dataclasses.replace(cheap, ms=(0.0, 0.0, 2e-3), source="fit")
    space = SearchSpace(lossless_first=False, sparsities=(0.0,), blocks=((1, 1), (8, 8)))
    link = LinkState.from_mbps(20)
    b = Budgets(latency_s=0.025, memory_bytes=1e9, new_tokens=8, prompt_tokens=4, handoff_latency_s=0.025)
    p_cheap = plan("slicer", model, _measured(cheap, model), link, b, space=space)
    p_costly = plan("slicer", model, _measured(costly, model), link, b, space=space)
    assert p_cheap.feasible and p_costly.feasible
    assert p_cheap.blocks == (8, 8) and p_costly.blocks == (1, 1)
    assert (p_costly.offload_step, p_costly.split) <= (p_cheap.offload_step, p_cheap.split)
    # The per-block charge shows in the predicted step: 2 blocks x 2 ms.
    assert p_costly.predicted_latency_s >= 4e-3


def test_measured_profile_roundtrips_its_stages(tmp_path):
    from slicer.policies.devices import load_measured, save_measured

    model = toy_llm(n_blocks=2)
    dev = _measured(roofline_coefficients(5e9, 1e-6), model)
    path = save_measured(tmp_path / "p.json", model, dev)
    _, back = load_measured(path)
    assert stage_coefficients(back) == stage_coefficients(dev)
    assert math.isclose(default_codec_time(SHAPE, cfg(), back), default_codec_time(SHAPE, cfg(), dev))
