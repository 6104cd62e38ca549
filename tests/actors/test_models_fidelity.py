"""Fidelity measurement (`slicer bench fidelity`): lossless is perfect, lossy is not,
bits per element count every payload byte."""
from __future__ import annotations

import json

import pytest
import torch

from slicer.actors.models import load_model
from slicer.actors.models.fidelity import (
    measure,
    sample_sequences,
    teacher_forced_logits,
)
from slicer.actors.models.testing import TINY_LM
from slicer.codec import CodecConfig
from slicer.orchestrator.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def stories(stories260k_path):
    return load_model(stories260k_path)


@pytest.fixture(scope="module")
def seqs(stories):
    return sample_sequences(stories, 2, 40, seed=0)


def test_sampled_sequences_are_seeded_and_start_with_bos(stories):
    a = sample_sequences(stories, 2, 12, seed=3)
    assert a.shape == (2, 12) and bool((a[:, 0] == 1).all())
    assert torch.equal(a, sample_sequences(stories, 2, 12, seed=3))
    assert not torch.equal(a, sample_sequences(stories, 2, 12, seed=4))


@pytest.mark.parametrize("mode,w", [("split", None), ("local-then-offload", 3), ("cloud-only", None), ("edge-only", None)])
def test_lossless_is_perfect(stories, seqs, mode, w):
    r = measure(stories, seqs, split=3, codec_spec="lossless", mode=mode, offload_step=w, prompt_len=8, greedy_tokens=6)
    assert r.next_token_agreement == 1.0 and r.greedy_agreement == 1.0 and r.greedy_prefix == 1.0
    assert r.kl < 1e-6 and abs(r.ppl_ratio - 1) < 1e-5
    assert r.positions == 2 * (40 - 8)


def test_teacher_forced_logits_match_the_unsplit_forward(stories, seqs):
    seq = seqs[:1]
    got, nbytes, nelem = teacher_forced_logits(stories, seq, 8, 2, "split", None, CodecConfig(method="raw"))
    ref = stories.run(0, stories.num_units, seq)[0, 7:39]
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)
    # one prefill payload (8 tokens), then one payload per token; raw = 4 bytes/element + a header
    assert nelem == [8 * 64] + [64] * 31
    assert all(b > 4 * e for b, e in zip(nbytes, nelem)) and all(b < 4 * e + 64 for b, e in zip(nbytes, nelem))


def test_lossy_codec_costs_fidelity_and_saves_bits(stories, seqs):
    lossless = measure(stories, seqs, split=2, codec_spec="lossless", prompt_len=8, greedy_tokens=0)
    r = measure(stories, seqs, split=2, codec_spec="int8", prompt_len=8, greedy_tokens=0)
    assert r.kl > 1e-5 and r.next_token_agreement <= 1.0
    assert r.bits_per_element < lossless.bits_per_element / 2.5  # 8-bit codes + per-row scale vs 32-bit raw
    assert lossless.bits_per_element > 32  # headers included


def test_cli_table_and_json(tmp_path, stories260k_path, capsys):
    out = tmp_path / "f.json"
    rc = main(["bench", "fidelity", "--model", str(stories260k_path), "--split", "2,4", "--codec", "lossless",
               "--sequences", "1", "--seq-len", "24", "--prompt-len", "8", "--tokens", "4", "--json", str(out)])
    assert rc == 0
    rows = json.loads(out.read_text())
    assert [r["split"] for r in rows] == [2, 4]
    for r in rows:
        for k in ("model", "split", "mode", "codec", "next_token_agreement", "kl", "ppl_ratio", "greedy_agreement",
                  "bits_per_element"):
            assert k in r
        assert r["next_token_agreement"] == 1.0
    assert "fewest bits/element" in capsys.readouterr().out


def test_cli_rejects_bad_split_and_codec(stories260k_path, capsys):
    assert main(["bench", "fidelity", "--model", str(stories260k_path), "--split", "9"]) == 2
    assert "allowed 1..6" in capsys.readouterr().err
    assert main(["bench", "fidelity", "--model", str(stories260k_path), "--split", "2", "--codec", "nosuch"]) == 2
    assert "nosuch" in capsys.readouterr().err


def test_front_bits_changes_the_edge_only(seqs, stories):
    r = measure(stories, seqs[:1], split=3, codec_spec="lossless", prompt_len=8, greedy_tokens=0, front_bits=8)
    assert r.front_bits == 8 and 0.5 < r.next_token_agreement < 1.0 and r.kl > 0


def test_tiny_family_fidelity_runs():
    m = load_model(TINY_LM["gpt2"])
    s = sample_sequences(m, 1, 20)
    r = measure(m, s, split=2, codec_spec="lossless", prompt_len=4, greedy_tokens=4)
    assert r.next_token_agreement == 1.0
