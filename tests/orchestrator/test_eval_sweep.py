"""`slicer sweep`: grid, measured and predicted columns, the front as marked, the plot."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from slicer.orchestrator.cli import main
from slicer.orchestrator.evaluation.pareto import pareto_mask
from slicer.orchestrator.evaluation.sweep import SweepGrid, windows_from_ids
from tests.orchestrator.conftest import make_char_llama

TASKS = Path(__file__).resolve().parents[2] / "examples" / "tasks"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    """A random tiny Llama with a character-level tokenizer, saved as a model folder."""
    return make_char_llama(tmp_path_factory, seed=1, name="tiny-char-llama-sweep")


def _read(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_grid_expands_bits_lists_and_modes():
    g = SweepGrid(splits=(1, 2), codecs=("lossless",), sparsities=(0.5,), bits=("8", "8/2"),
                  modes=("split", "local-then-offload"), offload_steps=(2, 4))
    assert g.codec_specs() == ["lossless", "slicer:sparsity=0.5,bits=8", "slicer:sparsity=0.5,bits=8/2,blocks=2,delta=none"]
    assert len(g.configs()) == 2 * 3 * (1 + 2)
    assert (2, "lossless", "local-then-offload", 4, None) in g.configs()
    g4 = SweepGrid(splits=(1,), codecs=("lossless",), front_bits=(None, 8, 4))
    assert [c[4] for c in g4.configs()] == [None, 8, 4]
    assert windows_from_ids(list(range(10)), 3, 2, 5) == [([0, 1, 2], [3, 4]), ([5, 6, 7], [8, 9])]
    with pytest.raises(ValueError, match="at least 4"):
        windows_from_ids([1, 2], 3, 2, 1)


def test_sweep_writes_csv_front_and_plot(tiny_dir, tmp_path):
    out = tmp_path / "sweep"
    rc = main(["sweep", "--model", str(tiny_dir), "--text", str(TASKS / "stories_mini.txt"), "--splits", "1,3",
               "--codecs", "lossless,int8", "--sparsities", "0.9", "--bits", "4", "--modes", "split,local-then-offload",
               "--offload-steps", "3", "--devices", "raspberry-pi-5,jetson-orin-agx", "--prompt-tokens", "8",
               "--score-tokens", "12", "--windows", "2", "--out", str(out)])
    assert rc == 0
    rows = _read(out / "sweep.csv")
    assert len(rows) == 2 * 3 * 2 * 2  # splits x codecs x (per-token, offload w=3) x devices
    for r in rows:
        assert r["metric"] == "next_token_agreement"
        assert float(r["predicted_step_ms"]) > 0 and float(r["measured_server_ms_per_token"]) > 0
        if r["codec"] == "lossless":
            assert float(r["fidelity"]) == 1.0 and float(r["bits_per_element"]) > 32
            assert abs(float(r["kl_nats"])) < 1e-4 and float(r["perplexity"]) == pytest.approx(float(r["unsplit_perplexity"]), rel=1e-4)
        else:
            assert float(r["kl_nats"]) > 0
    bits = {r["codec"]: float(r["bits_per_element"]) for r in rows if r["split"] == "1" and r["mode"] == "split"}
    # (At hidden size 32 with one payload per token, SLICER's metadata outweighs its
    # savings over int8: 13.3 against 11.4 bits per element in the run that wrote this.)
    assert bits["slicer:sparsity=0.9,bits=4"] < bits["lossless"] and bits["int8"] < bits["lossless"]
    # The marked front is the one computed from the CSV's own numbers, per device class.
    objectives = {"fidelity": "max", "bits_per_element": "min", "predicted_step_ms": "min"}
    for dev in ("raspberry-pi-5", "jetson-orin-agx"):
        sub = [r for r in rows if r["device"] == dev]
        pts = [{k: float(r[k]) for k in objectives} for r in sub]
        assert [r["on_front"] == "True" for r in sub] == pareto_mask(pts, objectives)
    front = _read(out / "front.csv")
    assert len(front) == sum(r["on_front"] == "True" for r in rows) > 0
    assert (out / "sweep.png").stat().st_size > 10_000
    meta = json.loads((out / "sweep.json").read_text())
    assert "predicted_step_ms" in meta["predicted"] and "fidelity" in meta["measured"]


def test_sweep_on_task_accuracy(tiny_dir, tmp_path):
    out = tmp_path / "task"
    rc = main(["sweep", "--model", str(tiny_dir), "--task", str(TASKS / "piqa_mini.jsonl"), "--splits", "2",
               "--codecs", "lossless", "--sparsities", "", "--bits", "", "--modes", "split,local-then-offload",
               "--offload-steps", "64", "--devices", "laptop-cpu", "--out", str(out)])
    assert rc == 0
    per_token, offload = _read(out / "sweep.csv")
    assert per_token["metric"] == "accuracy" and per_token["fidelity"] == per_token["unsplit_fidelity"]
    # w = 64 is past the end of every choice: nothing crossed the link, so the row has no
    # rate and cannot sit on the front with a fake 0 bits per element.
    assert offload["offload_step"] == "64" and offload["bits_per_element"] == "nan"
    assert offload["on_front"] == "False" and per_token["on_front"] == "True"


def test_sweep_without_tokenizer_samples_text(stories260k_path, tmp_path):
    out = tmp_path / "s"
    rc = main(["sweep", "--model", str(stories260k_path), "--splits", "3", "--codecs", "lossless,fp16",
               "--sparsities", "", "--bits", "", "--modes", "split", "--devices", "jetson-orin-nano",
               "--prompt-tokens", "8", "--score-tokens", "8", "--windows", "1", "--out", str(out)])
    assert rc == 0
    rows = {r["codec"]: r for r in _read(out / "sweep.csv")}
    assert float(rows["lossless"]["fidelity"]) == 1.0
    assert float(rows["fp16"]["bits_per_element"]) < float(rows["lossless"]["bits_per_element"])
    assert "sampled" in json.loads((out / "sweep.json").read_text())["source"]


def test_sweep_refuses_bad_codec_before_running(tiny_dir, tmp_path, capsys):
    rc = main(["sweep", "--model", str(tiny_dir), "--codecs", "nonsense", "--sparsities", "", "--bits", "",
               "--out", str(tmp_path / "x")])
    assert rc == 2 and "nonsense" in capsys.readouterr().err


def test_sweep_quantized_front_is_measured_and_predicted(tiny_dir, tmp_path):
    out = tmp_path / "front"
    rc = main(["sweep", "--model", str(tiny_dir), "--text", str(TASKS / "stories_mini.txt"), "--splits", "3",
               "--codecs", "lossless", "--sparsities", "", "--bits", "", "--modes", "split", "--front-bits", "none,4",
               "--devices", "raspberry-pi-5", "--prompt-tokens", "8", "--score-tokens", "12", "--windows", "1",
               "--out", str(out)])
    assert rc == 0
    rows = {r["front_precision"]: r for r in _read(out / "sweep.csv")}
    assert set(rows) == {"float32", "int4"}
    assert float(rows["float32"]["fidelity"]) == 1.0
    # int4 edge weights: a different split-run perplexity, and less weight traffic predicted.
    assert rows["int4"]["perplexity"] != rows["float32"]["perplexity"]
    assert float(rows["int4"]["predicted_step_ms"]) < float(rows["float32"]["predicted_step_ms"])


def test_measured_agreement_feeds_a_predict_only_sweep_of_a_big_model(tiny_dir, tmp_path):
    from slicer.policies import AccuracyTable

    measured = tmp_path / "measured"
    assert main(["sweep", "--model", str(tiny_dir), "--text", str(TASKS / "stories_mini.txt"), "--splits", "1,3",
                 "--codecs", "lossless,int8", "--sparsities", "", "--bits", "", "--modes", "split",
                 "--devices", "jetson-orin-agx", "--prompt-tokens", "8", "--score-tokens", "12", "--windows", "1",
                 "--out", str(measured)]) == 0
    acc_file = measured / "accuracy.jsonl"
    acc = [json.loads(l) for l in acc_file.read_text().splitlines()]
    assert {(a["split"], a["codec"]) for a in acc} == {(1, "lossless"), (1, "int8"), (3, "lossless"), (3, "int8")}
    assert all(a["num_units"] == 5 for a in acc)
    table = AccuracyTable.load(acc_file)  # the policies read the same file
    assert len(table.rows) == 4

    planned = tmp_path / "planned"
    assert main(["sweep", "--predict-only", "--model", "llama-3-70b", "--accuracy", str(acc_file),
                 "--splits", "16,60", "--codecs", "lossless,int8,fp16", "--sparsities", "", "--bits", "",
                 "--modes", "split", "--front-bits", "none,4", "--devices", "jetson-orin-agx,phone-soc", "--link-mbps", "20,50",
                 "--bandwidth-mhz", "20", "--out", str(planned)]) == 0
    rows = _read(planned / "sweep.csv")
    assert len(rows) == 2 * 3 * 2 * 2 * 2
    int8_tiny_split1 = next(a["next_token_agreement"] for a in acc if a["split"] == 1 and a["codec"] == "int8")
    q4 = {(r["split"], r["codec"], r["device"], r["link_mbps"]): r for r in rows if r["front_precision"] == "int4"}
    by = {(r["split"], r["codec"], r["device"], r["link_mbps"]): r for r in rows if r["front_precision"] == "bfloat16"}
    # int4 front: never measured at int4, so the measured value times the prior's 0.97.
    assert float(q4[("16", "int8", "jetson-orin-agx", "20")]["fidelity"]) == pytest.approx(min(1.0, int8_tiny_split1 * 0.97))
    # int8 at 70B split 16 of 82 units (relative 0.2) takes the tiny model's split 1 of 5 (0.2).
    r = by[("16", "int8", "jetson-orin-agx", "20")]
    assert r["fidelity_source"].startswith("table:") and "split 1/5" in r["fidelity_source"]
    assert float(r["fidelity"]) == pytest.approx(int8_tiny_split1)  # float32 -> bfloat16 front: prior factor 1
    assert by[("16", "fp16", "jetson-orin-agx", "20")]["fidelity_source"] == "prior"  # never measured
    # A faster link lowers the predicted per-token latency of the same plan.
    assert float(by[("60", "lossless", "phone-soc", "50")]["predicted_step_ms"]) < \
        float(by[("60", "lossless", "phone-soc", "20")]["predicted_step_ms"])
    for key in {(r["device"], r["link_mbps"]) for r in rows}:
        sub = [r for r in rows if (r["device"], r["link_mbps"]) == key]
        obj = {"fidelity": "max", "bits_per_element": "min", "predicted_step_ms": "min"}
        assert [r["on_front"] == "True" for r in sub] == pareto_mask([{k: float(r[k]) for k in obj} for r in sub], obj,
                                                                     [r["feasible"] == "True" for r in sub])
    meta = json.loads((planned / "sweep.json").read_text())
    assert meta["predict_only"] is True and meta["measured"] == []
