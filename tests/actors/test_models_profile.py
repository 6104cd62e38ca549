"""Profiles: unit parameter counts against the modules, analytic FLOPs against the
formula, meta-device profiles of big configs, unsupported architectures."""
from __future__ import annotations

import json

import pytest
import torch

from slicer.actors.models import (
    SUPPORTED,
    UnsupportedModelError,
    load_model,
    profile_from_config,
    resolve_config,
    shipped_configs,
)
from slicer.actors.models.testing import TINY_LM, TINY_VISION
from slicer.policies.profile import ModelProfile


def _llama_block_flops(c) -> float:
    H, nh, kvh, I = c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.intermediate_size
    hd = getattr(c, "head_dim", None) or H // nh
    return 2.0 * (H * nh * hd + 2 * H * kvh * hd + nh * hd * H + 3 * H * I)


def test_llama_units_count_the_modules_params():
    m = load_model(TINY_LM["llama"])
    p = m.profile
    base = m.hf.model
    assert p.layers[0].num_params == base.embed_tokens.weight.numel()
    for i, blk in enumerate(base.layers):
        assert p.layers[i + 1].num_params == sum(t.numel() for t in blk.parameters())
        assert p.layers[i + 1].param_bytes == 4 * p.layers[i + 1].num_params
        assert p.layers[i + 1].flops_per_token == _llama_block_flops(m.config)
        assert p.layers[i + 1].kv_bytes_per_token == 2 * 2 * 8 * 4  # K+V, 2 kv heads, head_dim 8, fp32
        assert p.layers[i + 1].attn_flops_per_token_per_ctx == 4 * 4 * 8
    assert p.layers[-1].num_params == base.norm.weight.numel() + m.hf.lm_head.weight.numel()
    assert p.layers[-1].flops_per_token == 2.0 * m.hf.lm_head.weight.numel()
    assert p.front_num_params(p.num_layers) == sum(t.numel() for t in m.hf.parameters())
    assert p.kind == "causal_lm" and p.family == "llama" and p.dtype == "float32"
    assert ModelProfile.from_json(p.to_json()) == p


def test_stories260k_profile(stories260k_path):
    m = load_model(stories260k_path)
    p = m.profile
    assert p.num_layers == 7 and p.vocab_size == 512 and p.hidden_size == 64
    assert p.extra["tied_embeddings"] is True
    # the tied matrix is in both the embed and head units: once more than the unique count
    assert sum(l.num_params for l in p.layers) == p.extra["total_params_unique"] + 512 * 64
    assert p.extra["total_params_unique"] == sum(t.numel() for t in m.hf.parameters())


@pytest.mark.parametrize("name", ["gpt2", "gpt_neox"])
def test_other_lm_families_count_params(name):
    m = load_model(TINY_LM[name])
    p = m.profile
    blocks = m.adapter.blocks
    for i, blk in enumerate(blocks):
        n = sum(t.numel() for t in blk.parameters())
        assert p.layers[i + 1].num_params == n
        # every weight matrix of the block, 2 FLOPs per weight per token
        w = sum(t.numel() for nm, t in blk.named_parameters() if t.dim() == 2)
        assert p.layers[i + 1].flops_per_token == 2.0 * w
    total = sum(t.numel() for t in m.hf.parameters())
    assert p.extra["total_params_unique"] == total


@pytest.mark.parametrize("name", sorted(TINY_VISION))
def test_vision_profile_shapes_match_real_features(name):
    m = load_model(TINY_VISION[name])
    p = m.profile
    x = torch.randn(1, 3, 32, 32)
    for i, l in enumerate(p.layers):
        x = m.run(i, i + 1, x)
        assert tuple(x.shape[1:]) == l.out_shape
        assert l.out_elements == x[0].numel()
        assert l.flops_per_token > 0
    assert sum(l.num_params for l in p.layers) == sum(t.numel() for t in m.hf.parameters())
    assert p.kind == "vision" and p.input_bytes_per_token == 3 * 32 * 32


def test_llama3_70b_from_config_needs_no_weights():
    p = profile_from_config("meta-llama/Meta-Llama-3-70B")
    total = sum(l.num_params for l in p.layers)
    assert 70.5e9 < total < 70.7e9  # 70,553,706,496 (model card: 70.6B)
    assert p.num_layers == 82 and p.dtype == "bfloat16"
    c = resolve_config("llama-3-70b")
    assert p.layers[1].flops_per_token == _llama_block_flops(c)
    assert p.layers[1].kv_bytes_per_token == 2 * 8 * 128 * 2  # K+V, 8 kv heads, head_dim 128, bf16
    assert p.front_param_bytes(82) == 2 * total
    # dtype override recomputes bytes
    assert profile_from_config("llama-3-70b", dtype="float32").front_param_bytes(82) == 4 * total


@pytest.mark.parametrize("name,lo,hi", [
    ("llama-3-8b", 8.0e9, 8.06e9), ("llama-2-7b", 6.7e9, 6.78e9), ("codestral-22b", 22.1e9, 22.3e9),
    ("qwen2.5-coder-7b", 7.6e9, 7.65e9), ("llama-3.2-3b", 3.2e9, 3.23e9), ("gpt2", 124e6, 125e6),
    ("pythia-160m", 162e6, 163e6), ("resnet-50", 25.5e6, 25.6e6), ("vit-base-patch16-224", 86.5e6, 86.6e6),
])
def test_shipped_configs_match_published_sizes(name, lo, hi):
    p = profile_from_config(name)
    total = p.extra.get("total_params_unique") or sum(l.num_params for l in p.layers)
    assert lo < total < hi


def test_every_shipped_config_resolves_and_aliases_work():
    assert len(shipped_configs()) >= 10
    for n in shipped_configs():
        assert resolve_config(n).model_type in SUPPORTED
    assert resolve_config("Qwen/Qwen2.5-Coder-7B").model_type == "qwen2"
    assert resolve_config("mistralai/Codestral-22B-v0.1").model_type == "mistral"


def test_config_json_path_and_folder(tmp_path, stories260k_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps(TINY_LM["qwen2"]))
    assert profile_from_config(str(f)).family == "llama"
    assert profile_from_config(str(stories260k_path)).num_layers == 7


def test_unsupported_architecture_lists_supported_ones():
    bert = dict(model_type="bert", hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                vocab_size=100)
    for fn in (load_model, profile_from_config):
        with pytest.raises(UnsupportedModelError) as e:
            fn(bert)
        msg = str(e.value)
        assert "'bert'" in msg
        for s in SUPPORTED:
            assert s in msg
