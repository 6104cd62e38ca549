"""The planner's payload bytes are upper bounds of the codec's real payloads, on real
activations of the trained stories260k model at every split."""
import pytest
import torch

from slicer import codec
from slicer.codec import CodecConfig
from slicer.policies import Budgets, CostModel, LinkState, get_device

CONFIGS = [
    CodecConfig(method="raw"),
    CodecConfig(method="slicer"),
    CodecConfig(method="slicer", sparsity=0.0, blocks=(8, 8)),
    CodecConfig(method="slicer", sparsity=0.9, blocks=(1, 1)),
    CodecConfig(method="slicer", sparsity=0.5, bits=4, delta=None),
    CodecConfig(method="opsc"),
    CodecConfig(method="int8"),
    CodecConfig(method="q8_0"),
]


@pytest.fixture(scope="module")
def stories(stories260k_path):
    from slicer.actors.models import load_model

    torch.manual_seed(0)
    return load_model(str(stories260k_path))


def test_predicted_bytes_bound_real_payloads(stories):
    prof = stories.profile
    cm = CostModel(prof, get_device("laptop-cpu"), LinkState.from_mbps(5), Budgets(latency_s=1, memory_bytes=1e9))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, prof.vocab_size, (1, 24), generator=g)
    checked = 0
    for ell in range(1, prof.num_layers - 1):
        h = stories.run(0, ell, ids)[0]  # (T, H) real activations after unit ell-1
        for tokens in (1, 24):
            x = h[-tokens:].contiguous()  # (tokens, H)
            for cfg in CONFIGS:
                real = len(codec.encode(x, cfg))
                predicted = cm.payload_bytes(ell, tokens, cfg)
                assert real <= predicted, (ell, tokens, cfg.spec(), real, predicted)
                if cfg.method in ("raw", "int8", "q8_0"):
                    # Fixed-rate methods: the bound is the size (headers of a bounded varint).
                    assert predicted - real <= 16, (cfg.spec(), real, predicted)
                checked += 1
    assert checked == (prof.num_layers - 2) * 2 * len(CONFIGS)
