"""Integration fixtures: a tiny random Llama saved as a model folder (no fixture files
needed) and one local multi-node cluster per test module."""
from __future__ import annotations

import pytest
import torch

TINY_LLAMA = {
    "model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4,
    "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 97, "max_position_embeddings": 128,
}
PROMPTS = [[1, 5, 9, 13, 2], [3, 4], [7, 8, 9, 10, 11, 12, 13], [20, 30, 40]]
CLASSES = ("raspberry-pi-5", "jetson-orin-nano")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from slicer.actors.models import load_model

    d = tmp_path_factory.mktemp("tiny-llama")
    load_model(dict(TINY_LLAMA), seed=5).hf.save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def tiny_reference(tiny_model_dir):
    """Unsplit greedy tokens of each prompt: ``ref(prompt, n)``."""
    from slicer.actors.models import load_model

    m = load_model(str(tiny_model_dir))

    def ref(prompt, n):
        cache = m.new_cache(0, m.num_units)
        x, out = torch.tensor([prompt]), []
        for _ in range(n):
            logits = m.run(0, m.num_units, x, cache)  # (1, T, V)
            out.append(int(logits[0, -1].argmax()))
            x = torch.tensor([[out[-1]]])
        return out

    return ref


@pytest.fixture(scope="module")
def local_cluster():
    """One embedded cluster per module: a server node + one node per class (~12 s)."""
    from slicer.orchestrator.cluster import LocalCluster

    with LocalCluster(edge_classes=CLASSES, edge_slots=16) as c:
        yield c
    assert not c.leftover_pids, f"cluster processes left behind: {c.leftover_pids}"
