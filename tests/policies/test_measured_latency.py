"""A measured profile (`slicer profile`'s procedure) predicts the step time of a real
split decode loop of stories260k on this machine.

The 25% goal is a timing target and lives in `slicer bench profile`: on this shared
2-core machine the CPU time of one thread still varies between rounds (one CI run saw
rounds from 0.56 to 1.74 and a median of 0.71). This test runs the same procedure and
asserts a band of 2x either way, which gross errors leave (a time unit off by 1000, a
profile of another model)."""
import pytest
import torch

from slicer.codec import CodecConfig
from slicer.orchestrator.bench.profile import predicted_over_measured, split_run


@pytest.fixture(scope="module")
def stories(stories260k_path):
    from slicer.actors.models import load_model

    return load_model(str(stories260k_path))


@pytest.fixture()
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_measured_profile_predicts_a_split_run(stories, one_thread):
    out = predicted_over_measured(stories, split=3, cfg=CodecConfig(method="slicer"), contexts=(8, 64), rounds=5)
    print(f"predicted/measured: edge {out['edge']:.3f} (rounds {[round(x, 3) for x in out['edge_rounds']]}), "
          f"edge+server {out['step']:.3f} (rounds {[round(x, 3) for x in out['step_rounds']]})")
    assert 0.5 <= out["edge"] <= 2.0
    assert 0.5 <= out["step"] <= 2.0


def test_split_run_times_every_step(stories):
    """The loop the benchmark measures is a real decode loop: one timed entry per step,
    the cache growing by one token a step."""
    cfg = CodecConfig(method="slicer")
    ctxs, edge, server = split_run(stories, 3, cfg, 8, 5, seed=0)
    assert ctxs == [8, 9, 10, 11, 12]
    assert len(edge) == len(server) == 5 and all(t > 0 for t in edge + server)
