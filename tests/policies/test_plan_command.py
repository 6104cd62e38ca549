"""`slicer plan` from a config alone (meta device, no weights) and from a profile JSON."""
import json

from policy_helpers import toy_llm

from slicer.orchestrator.cli import main

KEYS = ("split", "offload_step", "sparsity", "blocks", "bits", "front_precision", "predicted_latency_ms",
        "predicted_memory_mib", "bytes_per_token", "server_time_ms", "tier", "feasible", "reason")


def test_plan_llama3_70b_on_a_jetson_from_its_hub_name(tmp_path, capsys):
    out = tmp_path / "plan.json"
    rc = main(["plan", "--model", "meta-llama/Meta-Llama-3-70B", "--device", "jetson-orin-agx", "--rate-mbps", "20",
               "--latency-ms", "500", "--memory-mib", "32000", "--tokens", "64", "--json", str(out)])
    assert rc == 0
    d = json.loads(out.read_text())
    assert all(k in d for k in KEYS)
    assert d["feasible"] and 1 <= d["split"] < 82 and d["offload_step"] == 1  # 140 GB cannot run whole on 32 GB
    assert d["predicted_memory_mib"] <= 32000 and d["predicted_latency_ms"] <= 500
    assert 0 < d["server_time_ms"] < d["cloud_server_time_ms"]
    text = capsys.readouterr().out
    assert "FEASIBLE" in text and "reason:" in text


def test_infeasible_budget_is_an_answer_not_a_traceback(tmp_path, capsys):
    out = tmp_path / "plan.json"
    rc = main(["plan", "--model", "codestral-22b", "--device", "phone-soc", "--rate-mbps", "5", "--latency-ms", "100",
               "--memory-mib", "100", "--json", str(out)])
    assert rc == 1
    d = json.loads(out.read_text())
    assert d["feasible"] is False and d["binding"] == "memory" and "first unit" in d["reason"]
    assert "Traceback" not in capsys.readouterr().err


def test_bad_device_is_a_one_line_error(capsys):
    rc = main(["plan", "--model", "gpt2", "--device", "toaster", "--rate-mbps", "5", "--latency-ms", "100"])
    assert rc == 2
    assert "device 'toaster' is unknown" in capsys.readouterr().err


def test_plan_from_a_profile_json_and_all_policies(tmp_path):
    prof = tmp_path / "toy.json"
    prof.write_text(toy_llm().to_json())
    out = tmp_path / "all.json"
    rc = main(["plan", "--model", str(prof), "--device", "raspberry-pi-5", "--rate-mbps", "10", "--latency-ms", "200",
               "--memory-mib", "20", "--policy", "all", "--json", str(out), "--snr-db", "20"])
    assert rc == 0
    plans = json.loads(out.read_text())
    assert [p["policy"] for p in plans] == ["slicer", "opsc", "cloud-only", "edge-only", "fixed-split", "neurosurgeon"]
    assert all(all(k in p for k in KEYS) for p in plans)


def test_plan_codellama_34b_offline_from_its_hub_name(tmp_path, monkeypatch):
    """The seed's "Codestral-34B" does not exist; CodeLlama-34B (and Codestral-22B) are
    shipped configs: planning needs no hub access and no weights."""
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: (_ for _ in ()).throw(AssertionError("hub")))
    out = tmp_path / "plan.json"
    rc = main(["plan", "--model", "codellama/CodeLlama-34b-hf", "--device", "jetson-orin-agx", "--rate-mbps", "20",
               "--latency-ms", "200", "--tokens", "256", "--front-precision", "auto", "--json", str(out)])
    assert rc == 0
    d = json.loads(out.read_text())
    assert d["num_layers"] == 50 and d["feasible"] and d["predicted_latency_ms"] <= 200
    from slicer.actors.models import profile_from_config

    assert profile_from_config("codellama-34b").extra["total_params_unique"] == 33_743_970_304
