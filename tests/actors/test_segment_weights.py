"""Segment-only weights: a process holds the tensors of the units it runs, read by name
from the checkpoint's safetensors, and split runs with such halves give the unsplit
tokens."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from slicer.actors.models import load_model
from slicer.actors.models.generate import EdgeSession, ServerSession, reference_generate
from slicer.actors.models.testing import TINY_LM
from slicer.codec import CodecConfig

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = Path(__file__).resolve().parents[2] / "examples" / "models" / "slicer-tiny"
LOSSLESS = CodecConfig(method="raw")


def _unit_bytes(m, a, b):
    seen, total = set(), 0
    for u in m.units[a:b]:
        for mod in u.modules:
            for p in mod.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    total += p.numel() * p.element_size()
    return total


@pytest.fixture(scope="module", params=["checkpoint", "llama", "gpt2", "gpt_neox", "qwen2_sliding"])
def src(request):
    if request.param == "checkpoint":
        if not (TINY / "model.safetensors").exists():
            pytest.skip("examples/models/slicer-tiny has no weights")
        return str(TINY)
    return TINY_LM[request.param]


def test_halves_hold_only_their_units_and_give_unsplit_tokens(src):
    full = load_model(src, seed=2)
    n = full.num_units
    ell = 2
    front = load_model(src, seed=2, units=(0, ell))
    back = load_model(src, seed=2, units=(ell, n))
    assert front.loaded == set(range(ell)) and back.loaded == set(range(ell, n))
    assert front.weight_bytes == _unit_bytes(full, 0, ell) + sum(b.numel() * b.element_size() for b in front.hf.buffers()
                                                                 if b.device.type != "meta")
    assert front.weight_bytes < full.weight_bytes and back.weight_bytes < full.weight_bytes
    assert front.profile == full.profile  # the policy still sees the whole model
    prompt = torch.tensor([[3, 7, 11, 5, 9]])
    ref, _ = reference_generate(full, prompt, 8)
    edge, server = EdgeSession(front, ell, LOSSLESS), ServerSession(back, ell)
    st, out = edge.begin(prompt), []
    for i in range(8):
        out.append(server.step(st.payload))
        if i < 7:
            st = edge.next(out[-1])
    assert out == ref


def test_running_an_unloaded_unit_is_a_clear_error_and_ensure_units_loads_it(src):
    m = load_model(src, seed=2, units=(0, 1))
    h = m.run(0, 1, torch.tensor([[3, 4]]))
    with pytest.raises(ValueError, match="did not load"):
        m.run(1, 2, h)
    assert m.ensure_units(1, 3) > 0
    assert m.ensure_units(0, 3) == 0
    full = load_model(src, seed=2)
    torch.testing.assert_close(m.run(1, 3, h), full.run(1, 3, h), rtol=0, atol=0)


def test_nothing_loaded_is_shapes_only():
    m = load_model(TINY_LM["llama"], units=(0, 0))
    assert m.weight_bytes == 0 and m.loaded == set()
    assert m.num_units == 5 and m.profile.layers[1].num_params > 0


def test_quantized_front_keeps_no_float32_copy():
    """The edge quantizes a segment-only float32 load in place: what it holds is the
    int8 front alone, far below the float32 front (and the back is not held at all)."""
    from slicer.actors.edge import EdgeConfig, EdgeDevice, InProcessPolicy
    from slicer.actors.policy_actor import Policy, PolicyConfig
    from tests.actors.conftest import fixed_planner

    ref = dict(TINY_LM["llama"], hidden_size=64, intermediate_size=128)
    full = load_model(ref)
    policy = Policy(PolicyConfig(name="fixed"), full.profile, planner=fixed_planner(3, 1, precision="int8"))
    edge = EdgeDevice(EdgeConfig(device_id="d", device_class="raspberry-pi-5"), ref, None, InProcessPolicy(policy))
    assert edge.memory()[1] == 0  # nothing until a plan runs
    q = edge.model_for("int8", 3)
    held = edge.memory()[1]
    assert held >= q.weight_bytes > 0
    fp32_front = _unit_bytes(full, 0, 3)
    assert held < 0.5 * fp32_front, (held, fp32_front)
    assert edge.memory()[0] is None or edge.memory()[0] > 0


def test_untied_head_is_not_taken_from_the_embedding(tmp_path):
    """A checkpoint with separate embedding and LM-head tensors (the class still lists the
    pair as tieable): a segment load of the whole model gives the full model's outputs."""
    cfg = dict(TINY_LM["llama"], tie_word_embeddings=False)
    full = load_model(cfg, seed=3)
    full.hf.save_pretrained(tmp_path)
    ref = load_model(str(tmp_path))
    seg = load_model(str(tmp_path), units=(0, full.num_units))
    ids = torch.tensor([[3, 9, 4]])
    torch.testing.assert_close(seg.run(0, full.num_units, ids), ref.run(0, full.num_units, ids), rtol=0, atol=0)
    back = load_model(str(tmp_path), units=(0, 0))
    back.ensure_units(2, full.num_units)
    back.ensure_units(0, 2)  # the embedding after the head: still two tensors
    torch.testing.assert_close(back.run(0, full.num_units, ids), ref.run(0, full.num_units, ids), rtol=0, atol=0)
