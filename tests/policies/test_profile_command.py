"""`slicer profile` writes a measured profile to the cache and `slicer plan` reads it."""
import json

from slicer.orchestrator.cli import main
from slicer.policies.devices import load_measured


def test_profile_then_plan_from_the_measured_file(stories260k_path, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SLICER_CACHE", str(tmp_path))
    args = ["profile", "--model", str(stories260k_path), "--device", "box", "--contexts", "4,16", "--reps", "2",
            "--prefill-tokens", "4", "--codecs", "lossless;slicer", "--clock", "cpu", "--threads", "1"]
    assert main(args) == 0
    err = capsys.readouterr().err  # progress: one line as each stage starts
    for line in ("[1/2] 7 units after a 4-token cache", "[2/2] 7 units after a 16-token cache", "prefill of 4 tokens",
                 "2 codec setting(s)"):
        assert f"slicer profile: {line}" in err, err
    files = list((tmp_path / "profiles").glob("*.json"))
    assert len(files) == 1 and files[0].name.endswith("stories260k-box-float32-v1.json")
    model, dev = load_measured(files[0])
    assert dev.kind == "measured" and dev.measured.contexts == (4, 16)
    assert len(dev.measured.unit_s[0]) == model.num_layers == 7
    assert all(t >= 0 for row in dev.measured.unit_s for t in row) and sum(dev.measured.unit_s[0]) > 0
    assert {s for s, _, _ in dev.measured.codec} == {"lossless", "slicer"}
    # A second call finds the cache.
    capsys.readouterr()
    assert main(args) == 0 and "cached profile" in capsys.readouterr().out
    # Plan from the measured pair (model and device from the same file).
    out = tmp_path / "plan.json"
    rc = main(["plan", "--model", str(files[0]), "--device", str(files[0]), "--server", str(files[0]),
               "--rate-mbps", "5", "--latency-ms", "50", "--memory-mib", "1", "--tokens", "16", "--json", str(out)])
    d = json.loads(out.read_text())
    assert rc == 0 and d["feasible"] and 1 <= d["split"] < 7  # 1 MiB cannot hold the whole 1.1 MB model
    assert d["device"] == "box"
