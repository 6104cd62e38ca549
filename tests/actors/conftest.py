"""A tiny random Llama shared by the edge/server unit tests (no fixture files needed)."""
from __future__ import annotations

import pytest
import torch

from slicer.actors.protocol import Plan

TINY_LLAMA = {
    "model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4,
    "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 97, "max_position_embeddings": 128,
}


@pytest.fixture(scope="module")
def one_thread():
    """Tiny matmuls: one thread is 6-40x faster than two on a shared 2-core machine (a
    12-token generate took 0.05 s against 0.37-2.4 s). Modules opt in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_model():
    from slicer.actors.models import load_model

    torch.set_num_threads(1)
    return load_model(dict(TINY_LLAMA), seed=3)


def greedy_reference(model, prompt: list[int], n: int) -> list[int]:
    """The unsplit model's greedy tokens (units [0, n) with one cache)."""
    cache = model.new_cache(0, model.num_units)
    x = torch.tensor([prompt])  # (1, T)
    out = []
    for _ in range(n):
        logits = model.run(0, model.num_units, x, cache)  # (1, T, V)
        out.append(int(logits[0, -1].argmax()))
        x = torch.tensor([[out[-1]]])
    return out


def fixed_planner(split: int, offload_step: int | None, codec: str = "lossless", precision: str = "float32"):
    """A planner returning one fixed plan (stands in for ``slicer.policies.plan``)."""

    def planner(cfg, profile, dev):
        return Plan.fixed(split, offload_step, profile.num_layers, codec, precision, predicted_memory_bytes=1e6,
                          reason=f"fixed test plan l={split} w={offload_step}", device=dev.device_id)

    return planner
