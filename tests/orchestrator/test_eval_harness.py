"""The task harness: scorers (unsplit and split with the codec in the loop) and task metrics."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from slicer.orchestrator.cli import main
from slicer.orchestrator.evaluation.harness import agreement, evaluate_task
from slicer.orchestrator.evaluation.scorers import (
    HFScorer,
    SplitScorer,
    TokenScores,
    load_tokenizer,
)
from slicer.orchestrator.evaluation.tasks import load_task
from tests.orchestrator.conftest import make_char_llama

TASKS = Path(__file__).resolve().parents[2] / "examples" / "tasks"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    """A random tiny Llama with a character-level tokenizer, saved as a model folder."""
    return make_char_llama(tmp_path_factory, seed=0, name="tiny-char-llama")


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    from slicer.actors.models import load_model

    return load_model(str(tiny_dir)), load_tokenizer(str(tiny_dir))


def _ids(tok, text):
    return [tok.bos_id] + tok.encode(text)


def test_split_lossless_matches_unsplit(tiny):
    model, tok = tiny
    ref = HFScorer(model.hf, eos_id=tok.eos_id)
    ctx, cont = _ids(tok, "def add(a, b):"), tok.encode("\n    return a + b")
    r = ref.score(ctx, cont)
    for kw in (dict(mode="split"), dict(mode="local-then-offload", offload_step=4)):
        sp = SplitScorer(model, 2, None, eos_id=tok.eos_id, **kw)
        s = sp.score(ctx, cont)
        assert s.greedy == r.greedy
        assert max(abs(a - b) for a, b in zip(r.logprobs, s.logprobs)) < 1e-4  # float32 reorderings only
        assert sp.generate(ctx, 12) == ref.generate(ctx, 12)
        assert sp.stats.payloads > 0 and sp.stats.bits_per_element > 32  # raw fp32 + headers


def test_loglikelihood_follows_the_chain_rule(tiny):
    model, tok = tiny
    sc = HFScorer(model.hf)
    ctx, a, b = _ids(tok, "x = "), tok.encode("12"), tok.encode("3;")
    assert sc.loglikelihood(ctx, a + b) == pytest.approx(sc.loglikelihood(ctx, a) + sc.loglikelihood(ctx + a, b), abs=1e-4)
    assert sc.loglikelihood(ctx, a) < 0
    with pytest.raises(ValueError, match="context_ids is empty"):
        sc.loglikelihood([], a)


def test_lossy_codec_changes_scores_and_counts_bits(tiny):
    from slicer.codec import CodecConfig

    model, tok = tiny
    ctx, cont = _ids(tok, "for i in range(10):"), tok.encode("\n    print(i)")
    lossless = SplitScorer(model, 2, None).score(ctx, cont)
    lossy_sc = SplitScorer(model, 2, CodecConfig.parse("fp16"))
    lossy = lossy_sc.score(ctx, cont)
    assert lossy.logprobs != lossless.logprobs
    assert max(abs(a - b) for a, b in zip(lossless.logprobs, lossy.logprobs)) < 0.05  # fp16 stays close
    assert lossy_sc.stats.bits_per_element < 32


class FakeTokenizer:
    """One token per character (ord), BOS 0."""

    bos_id, eos_id = 0, None

    def encode(self, text):
        return [ord(c) for c in text]

    def decode(self, ids):
        return "".join(chr(i) for i in ids)


class FakeScorer:
    """Uniform over ``vocab`` tokens, except that it likes the letter ``likes`` (log 1/2)
    and generates ``text`` whatever the prompt."""

    name = "fake"
    max_len = 10_000

    def __init__(self, vocab=256, likes="", text=""):
        self.vocab, self.likes, self.text = vocab, likes, text

    def score(self, ctx, cont):
        lp = [math.log(0.5) if chr(t) in self.likes else -math.log(self.vocab) for t in cont]
        return TokenScores(lp, [0] * len(cont))

    def loglikelihood(self, ctx, cont):
        return sum(self.score(ctx, cont).logprobs)

    def generate(self, prompt, n, temperature=0.0, seed=0):
        return [ord(c) for c in self.text][:n]


def test_perplexity_of_a_uniform_model_is_its_vocabulary_size():
    task = load_task(TASKS / "stories_mini.txt")
    run = evaluate_task(task, FakeScorer(vocab=256), FakeTokenizer(), window=32)
    assert run.metrics["perplexity"] == pytest.approx(256.0)
    assert run.metrics["tokens"] == len(task.items[0])  # every character scored once (BOS conditions the first)


def test_multiple_choice_accuracy_and_norm():
    task = load_task(TASKS / "piqa_mini.jsonl")
    # The fake model gives 'f' and 'r' log(1/2) and every other character log(1/256).
    # Item 0 (label 0): " put it in the fridge." (22 chars, f and r) sums to -112.3 nats, " put it
    # in the oven." (20 chars) to -110.9: the sum picks 1 (wrong), per byte -5.10 > -5.55 picks 0 (right).
    # Item 1 (label 1): " pour water on it." (18, two r) -90.1 against " use a towel." (13) -72.1:
    # the sum picks 1 (right), per byte -5.01 > -5.55 picks 0 (wrong).
    run = evaluate_task(task, FakeScorer(vocab=256, likes="fr"), FakeTokenizer())
    assert run.outputs == [1, 1] and [i["pick_norm"] for i in run.items] == [0, 0]
    assert run.metrics["accuracy"] == 0.5 and run.metrics["accuracy_norm"] == 0.5
    hs = evaluate_task(load_task(TASKS / "hellaswag_mini.jsonl"), FakeScorer(vocab=256, likes="w"), FakeTokenizer())
    assert len(hs.items[0]["loglikelihoods"]) == 4


def test_progress_bar_counts_items_on_stderr(capsys):
    task = load_task(TASKS / "piqa_mini.jsonl")
    evaluate_task(task, FakeScorer(vocab=256), FakeTokenizer(), progress=True)
    cap = capsys.readouterr()
    assert f"{len(task.items)}/{len(task.items)}" in cap.err and cap.out == ""
    evaluate_task(task, FakeScorer(vocab=256), FakeTokenizer(), progress=False)
    assert capsys.readouterr().err == ""


def test_exact_match_and_code_through_the_sandbox():
    gsm = load_task(TASKS / "gsm8k_mini.jsonl")
    run = evaluate_task(gsm, FakeScorer(text=" 3 + 4 = 7\n\nQuestion: 120"), FakeTokenizer())
    assert [i["answer"] for i in run.items] == ["7", "7", "7"]  # cut at the stop sequence
    assert run.metrics["exact_match"] == pytest.approx(1 / 3)
    he = load_task(TASKS / "humaneval_mini.jsonl")
    good = evaluate_task(he, FakeScorer(text="    return a + b\n\ndef unrelated():\n    pass"), FakeTokenizer(), limit=1)
    assert good.outputs == ["    return a + b\n"] and good.metrics["pass_at_1"] == 1.0
    bad = evaluate_task(he, FakeScorer(text="    while True:\n        pass\n"), FakeTokenizer(), limit=1,
                        sandbox=__import__("slicer.orchestrator.evaluation.sandbox", fromlist=["x"]).SandboxLimits(timeout_s=1.0))
    assert bad.metrics["pass_at_1"] == 0.0 and bad.items[0]["error"] == "timeout"
    assert agreement(good, bad) == {"output_agreement": 0.0}


def test_cli_runs_the_model_split_and_unsplit(tiny_dir, tmp_path):
    out = tmp_path / "arc.json"
    assert main(["eval", "--model", str(tiny_dir), "--task", str(TASKS / "arc_mini.jsonl"), "--split", "2",
                 "--codec", "lossless", "--json", str(out)]) == 0
    rep = json.loads(out.read_text())
    unsplit, split = rep["runs"]
    assert (unsplit["name"], split["name"]) == ("unsplit", "split")
    assert unsplit["metrics"]["accuracy"] == split["metrics"]["accuracy"]
    assert rep["agreements"] == {"next_token_agreement": 1.0, "output_agreement": 1.0}
    assert rep["plan"]["split"] == 2 and rep["plan"]["codec"] == "lossless"

    out = tmp_path / "ppl.json"
    assert main(["eval", "--model", str(tiny_dir), "--task", str(TASKS / "stories_mini.txt"), "--split", "1",
                 "--codec", "slicer:sparsity=0.5,bits=4,delta=none", "--mode", "local-then-offload", "--offload-step", "3",
                 "--json", str(out)]) == 0
    rep = json.loads(out.read_text())
    unsplit, split = rep["runs"]
    assert split["metrics"]["perplexity"] != unsplit["metrics"]["perplexity"]
    assert 0 < split["metrics"]["bits_per_element"] < 32 and split["metrics"]["server_s"] > 0


def test_cli_code_task_with_the_model(tiny_dir, tmp_path):
    out = tmp_path / "code.json"
    assert main(["eval", "--model", str(tiny_dir), "--task", str(TASKS / "humaneval_mini.jsonl"), "--limit", "2",
                 "--max-new-tokens", "8", "--timeout-s", "2", "--json", str(out)]) == 0
    rep = json.loads(out.read_text())
    # A random model does not solve these; what matters is that completions ran in the sandbox.
    assert [r["task_id"] for r in rep["results"]] == ["mini/0", "mini/1"]
    assert rep["pass_at_1"] == 0.0 and all(r["error"] for r in rep["results"])
    assert rep["agreements"]["output_agreement"] == 1.0  # lossless default codec


def test_cli_plan_from_a_policy_and_a_quantized_front(tiny_dir, tmp_path):
    out = tmp_path / "policy.json"
    assert main(["eval", "--model", str(tiny_dir), "--task", str(TASKS / "piqa_mini.jsonl"), "--policy", "slicer",
                 "--device", "jetson-orin-nano", "--max-new-tokens", "16", "--json", str(out)]) == 0
    rep = json.loads(out.read_text())
    pp = rep["policy_plan"]
    assert pp["policy"] == "slicer" and pp["num_layers"] == 5
    if pp["offload_step"] is not None and 0 < pp["split"] < 5:
        assert rep["plan"]["split"] == pp["split"] and rep["plan"]["codec"] == pp["codec_spec"]
    else:  # edge-only or cloud-only: the whole model's outputs
        assert rep["agreement"] == 1.0 and rep["plan"]["note"]

    out = tmp_path / "front.json"
    assert main(["eval", "--model", str(tiny_dir), "--task", str(TASKS / "piqa_mini.jsonl"), "--split", "2",
                 "--front-bits", "4", "--json", str(out)]) == 0
    rep = json.loads(out.read_text())
    unsplit, split = rep["runs"]
    assert rep["plan"]["front_bits"] == 4
    # int4 weights on the edge change the scores even with a lossless link.
    assert [i["loglikelihoods"] for i in unsplit["items"]] != [i["loglikelihoods"] for i in split["items"]]


def test_cli_model_without_tokenizer_is_refused_clearly(stories260k_path, capsys):
    assert main(["eval", "--model", str(stories260k_path), "--task", str(TASKS / "piqa_mini.jsonl")]) == 2
    assert "--tokenizer" in capsys.readouterr().err


def test_sampling_is_seeded_and_shared_by_split_and_unsplit(tiny):
    from slicer.orchestrator.evaluation.scorers import pick

    model, tok = tiny
    logits = torch.tensor([0.0, 3.0, 1.0])
    assert pick(logits, 0.0, None) == 1
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert [pick(logits, 1.0, g1) for _ in range(20)] == [pick(logits, 1.0, g2) for _ in range(20)]
    ref = HFScorer(model.hf)
    sp = SplitScorer(model, 2, None)
    ctx = _ids(tok, "def f(x):")
    a = [ref.generate(ctx, 8, temperature=1.0, seed=s) for s in range(3)]
    b = [sp.generate(ctx, 8, temperature=1.0, seed=s) for s in range(3)]
    assert a == b  # lossless split, same seeds: the same samples
    assert len({tuple(x) for x in a}) > 1  # and the seeds give different samples
    off = SplitScorer(model, 2, None, mode="local-then-offload", offload_step=4)
    assert [off.generate(ctx, 8, temperature=1.0, seed=s) for s in range(3)] == a  # local steps sample too


def test_cli_code_pass_at_k_with_samples(tiny_dir, tmp_path):
    out = tmp_path / "k.json"
    assert main(["eval", "--model", str(tiny_dir), "--task", str(TASKS / "humaneval_mini.jsonl"), "--limit", "2",
                 "--max-new-tokens", "6", "--n-samples", "3", "--temperature", "1.0", "--k", "1,2,3,10",
                 "--timeout-s", "2", "--json", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert [(r["task_id"], r["completion_id"]) for r in rep["results"]] == [
        ("mini/0", 0), ("mini/0", 1), ("mini/0", 2), ("mini/1", 0), ("mini/1", 1), ("mini/1", 2)]
    assert set(rep["pass_at_k"]) == {"pass_at_1", "pass_at_2", "pass_at_3"}  # no pass@10 from 3 samples
    assert rep["agreements"]["output_agreement"] == 1.0
