"""The protocol (``slicer.actors.protocol``): typed values cross every layer and become
dicts only in its serialisation (``to_json``/``from_json``)."""
from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import pytest

from slicer.actors.protocol import (
    EmulationSpec,
    LinkSpec,
    Mode,
    Plan,
    PlanKey,
    Replan,
    Request,
    RequestRecord,
    StepRecord,
    StepResult,
    from_json,
    to_json,
)

ROOT = Path(__file__).resolve().parents[2]

#: Field names that belong to plans, requests, records and steps only (names also used by
#: load rows, summaries or stats, such as ``tokens`` or ``server_compute_s``, are left out).
PROTOCOL_KEYS = {
    "prompt_ids", "max_new_tokens", "prompt_index", "request_id", "split", "offload_step", "codec_spec",
    "front_precision", "plan_tier", "plan_reason", "plan_feasible", "plan_binding", "predicted_memory_bytes",
    "link_changed", "max_new_tokens_requested", "replans", "steps", "token", "payload_bytes", "send_t", "recv_t",
    "server_recv_t", "server_start_t", "server_done_t", "transfer_emulated_s", "edge_compute_emulated_s",
}

#: (file, variable) pairs that subscript a PROTOCOL_KEYS name on something that is not a
#: protocol value, each with what it is.
ALLOWED = {
    ("actors/policy_actor.py", "opts"): "keyword options of policies.PolicyState",
    ("orchestrator/commands/plan.py", "kw"): "keyword options of policies.plan",
    ("policies/api.py", "options"): "keyword options of a policy",
    ("policies/baselines.py", "kw"): "keyword options of a policy",
    ("policies/accuracy.py", "r"): "rows of an accuracy table file",
    ("orchestrator/evaluation/sweep.py", "row"): "CSV rows of slicer sweep",
    ("orchestrator/commands/eval.py", "pl"): "the eval report's JSON, printed",
    ("orchestrator/bench/serve.py", "mem_row"): "a bench row (JSON output)",
    ("orchestrator/bench/serve.py", "m"): "a bench result (JSON output), printed",
    ("orchestrator/commands/eval.py", "pp"): "the eval report's policy plan JSON, printed",
    ("orchestrator/results.py", "p"): "summary.json's per-device plan summary, printed",
    ("orchestrator/bench/server_light.py", "p"): "summary.json's per-device plan summaries, printed",
    ("actors/loadmeter.py", "METRICS"): "the metrics registry (a step counter)",
}


def _string_key_uses(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) \
                and isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str):
            yield node.lineno, node.value.id, node.slice.value
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" \
                and isinstance(node.func.value, ast.Name) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            yield node.lineno, node.func.value.id, node.args[0].value


def test_no_string_key_access_to_protocol_fields_outside_the_serialisation():
    bad = []
    for top in ("actors", "orchestrator", "policies"):
        for f in sorted((ROOT / top).rglob("*.py")):
            rel = f.relative_to(ROOT).as_posix()
            if rel == "actors/protocol.py":
                continue
            for line, var, key in _string_key_uses(ast.parse(f.read_text(), rel)):
                if key in PROTOCOL_KEYS and (rel, var) not in ALLOWED:
                    bad.append(f"{rel}:{line}: {var}[{key!r}]")
    assert not bad, "string-key access to protocol fields (use the typed values):\n" + "\n".join(bad)


def test_the_check_finds_what_it_looks_for():
    src = 'plan = {}\nx = plan["split"]\ny = rec.get("request_id")\nz = stats["tokens"]\n'
    keys = sorted((v, k) for _, v, k in _string_key_uses(ast.parse(src)) if k in PROTOCOL_KEYS)
    assert keys == [("plan", "split"), ("rec", "request_id")]  # stats["tokens"]: not a protocol key


def _record() -> RequestRecord:
    rec = RequestRecord(request_id="d-0/r1", device="d-0", index=1, ok=True, mode=Mode.LOCAL_THEN_OFFLOAD, split=2,
                        offload_step=3, codec="slicer:sparsity=0.5", link=LinkSpec(rate_mbps=2.5),
                        emulation=EmulationSpec(slowdown=2.0, link=True), tokens=[5, 6, 7],
                        replans=[Replan(step=1, goodput_mbps=0.5, before=PlanKey(2, 3, "float32", "lossless"),
                                        after=PlanKey(2, 3, "float32", "fp16"), applies="next step")])
    rec.steps = [StepRecord(step=0, kind="local", tokens=4, token=5, edge_compute_s=0.01),
                 StepRecord(step=2, kind="handoff", tokens=6, token=7, payload_bytes=100, elements=192,
                            send_t=1.0, server_recv_t=1.001, server_done_t=1.002, recv_t=1.003)]
    rec.add_totals()
    return rec


def test_records_round_trip_through_json():
    rec = _record()
    row = json.loads(json.dumps(to_json(rec)))
    assert row["mode"] == "local-then-offload" and row["link"]["rate_mbps"] == 2.5
    assert row["steps"][0]["payload_bytes"] is None and row["replans"][0]["applies"] == "next step"
    back = from_json(RequestRecord, row)
    assert back == rec and isinstance(back.mode, Mode) and isinstance(back.steps[1], StepRecord)
    assert back.replans[0].before == PlanKey(2, 3, "float32", "lossless")  # nested values come back typed
    assert row["replans"][0]["after"]["codec_spec"] == "fp16"  # named in the JSON
    # A row from an older or newer run folder: unknown keys are ignored, missing ones default.
    old = from_json(RequestRecord, {"request_id": "x", "device": "d", "index": 0, "from_the_future": 1})
    assert old.ok is False and old.steps == []


def test_totals_count_only_steps_that_sent():
    rec = _record()
    assert rec.payloads == 1 and rec.bytes_sent == 100
    assert rec.bits_per_element == round(800 / 192, 4)
    assert rec.transfer_s == pytest.approx(0.002)  # round trip minus the server's time


def test_values_are_frozen_and_plans_carry_their_codec():
    step = StepResult(token=1, position=0, server_recv_t=0.0, decode_s=0.0, server_compute_s=0.0,
                      server_start_t=0.0, server_done_t=0.0, batch_size=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        step.token = 2  # type: ignore[misc]
    p = Plan.fixed(2, 1, 6, "slicer:sparsity=0.5")
    assert p.mode == Mode.SPLIT and p.codec.sparsity == 0.5 and p.codec_spec == p.codec.spec()
    assert Plan.fixed(0, 1, 6).mode == Mode.CLOUD_ONLY and Plan.fixed(6, None, 6).mode == Mode.EDGE_ONLY
    assert Plan.fixed(2, 4, 6).mode == Mode.LOCAL_THEN_OFFLOAD
    assert to_json(p)["mode"] == "split" and "codec" not in to_json(p)  # the spec is its JSON
    r = Request("d/r0", 0, (1, 2), 4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.max_new_tokens = 8  # type: ignore[misc]
