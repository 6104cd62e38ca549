"""The workload's seed reaches the codec (its rotation and tie-breaks) unless the codec spec
names its own; the records say which seed encoded each request."""
from __future__ import annotations

import pytest

from slicer.codec import CodecConfig
from slicer.orchestrator.runner import edge_config, run_inprocess
from slicer.orchestrator.workload import parse_workload


def _wl(model_dir, codec, seed):
    return parse_workload({"name": "seed", "model": str(model_dir), "inputs": {"prompts": [[1, 5, 9, 13, 2]]},
                           "devices": [{"class": "raspberry-pi-5", "count": 1}], "requests": 1, "max_new_tokens": 3,
                           "policy": {"name": "fixed", "split": 2}, "codec": codec, "seed": seed})


@pytest.mark.parametrize("spec, seed, want", [
    ("ecsq:rate=4,rotate=true", 7, 7),     # the workload's seed
    ("ecsq:rate=4,rotate=true,seed=3", 7, 3),  # the spec's own seed wins
])
def test_seed_reaches_the_codec(model_dir, spec, seed, want):
    wl = _wl(model_dir, spec, seed)
    dev_id, g = wl.all_devices()[0]
    assert edge_config(wl, dev_id, g).seed == seed
    out = run_inprocess(wl)
    (rec,) = out.records
    assert CodecConfig.parse(rec.codec).seed == want
    assert CodecConfig.parse(rec.codec).rotate and len(rec.tokens) == 3
