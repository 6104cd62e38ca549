"""EdgeDevice + Server + Policy wired in-process (no Ray)."""
from __future__ import annotations

import asyncio
import re

import pytest
import torch

from slicer.actors.edge import EdgeConfig, EdgeDevice, InProcessPolicy, InProcessServer
from slicer.actors.models.generate import step_peak_bytes
from slicer.actors.policy_actor import Policy, PolicyConfig
from slicer.actors.protocol import (
    AdmissionError,
    EmulationSpec,
    LinkChange,
    LinkSpec,
    Request,
    encode_ids,
)
from slicer.actors.server import Server, ServerConfig, SessionExpiredError
from slicer.codec import CodecConfig, encode
from tests.actors.conftest import fixed_planner, greedy_reference

PROMPTS = [[1, 5, 9, 13, 2], [3, 4], [7, 8, 9, 10, 11, 12, 13]]


def _edge(model, server, planner, device_id="dev-0", **cfg):
    policy = Policy(PolicyConfig(name="fixed"), model.profile, planner=planner)
    return EdgeDevice(EdgeConfig(device_id=device_id, device_class="raspberry-pi-5", **cfg), "unused",
                      InProcessServer(server) if server is not None else None, InProcessPolicy(policy), model=model), policy


@pytest.mark.parametrize("split,w,mode", [
    (0, 1, "cloud-only"), (1, 1, "split"), (3, 1, "split"), (5, 1, "split"),
    (3, 3, "local-then-offload"), (2, 2, "local-then-offload"), (6, None, "edge-only"),
])
def test_lossless_every_mode_gives_unsplit_greedy_tokens(tiny_model, split, w, mode):
    server = Server(tiny_model, ServerConfig())
    edge, _ = _edge(tiny_model, server, fixed_planner(split, w))
    for i, prompt in enumerate(PROMPTS):
        rec = edge.generate(Request(f"r{i}", i, tuple(prompt), 6))
        assert rec.ok, rec.error
        assert rec.mode == mode
        assert rec.tokens == greedy_reference(tiny_model, prompt, 6)
        assert len(rec.steps) == 6
    st = server.stats()
    if mode == "edge-only":
        assert st["requests"] == 0 and st["compute_s_total"] == 0
    else:
        assert st["requests"] == len(PROMPTS) and st["compute_s_total"] > 0
        assert st["open_sessions"] == 0 and st["reserved_kv_bytes"] == 0  # every session closed


def test_split_records_bytes_and_hops(tiny_model):
    server = Server(tiny_model, ServerConfig())
    edge, _ = _edge(tiny_model, server, fixed_planner(2, 1))
    rec = edge.generate(Request("r", 0, tuple(PROMPTS[0]), 4))
    sent = [s for s in rec.steps if s.sent]
    assert [s.kind for s in sent] == ["prefill", "decode", "decode", "decode"]
    assert sent[0].tokens == len(PROMPTS[0]) and sent[0].elements == len(PROMPTS[0]) * 32
    # raw float32 features: 32 bits per element plus the header
    assert all(32 < s.bits_per_element < 32 * 2 for s in sent)
    assert rec.bytes_sent == sum(s.payload_bytes for s in sent)
    for s in sent:
        assert s.send_t <= s.server_recv_t <= s.server_done_t <= s.recv_t


def test_local_then_offload_hands_off_once_with_all_tokens(tiny_model):
    server = Server(tiny_model, ServerConfig())
    edge, _ = _edge(tiny_model, server, fixed_planner(3, 4))
    rec = edge.generate(Request("r", 0, tuple(PROMPTS[1]), 6))
    kinds = [s.kind for s in rec.steps]
    assert kinds == ["local", "local", "local", "handoff", "decode", "decode"]
    handoff = rec.steps[3]
    assert handoff.tokens == len(PROMPTS[1]) + 3  # prompt + the 3 local tokens cross at once


def test_lossy_codec_still_generates(tiny_model):
    server = Server(tiny_model, ServerConfig())
    edge, _ = _edge(tiny_model, server, fixed_planner(2, 1, codec="fp16"))
    rec = edge.generate(Request("r", 0, tuple(PROMPTS[2]), 4))
    assert rec.ok and rec.codec == "fp16"
    assert all(15 < s.bits_per_element < 24 for s in rec.steps if s.sent)


def test_batched_server_matches_one_by_one(tiny_model):
    """Steps of several sessions of different lengths batched by the async loop give the
    same tokens as the unsplit model."""
    server = Server(tiny_model, ServerConfig(max_batch=8, batch_window_ms=20))
    split = 2

    async def session(prompt, n):
        sid = server.open_session("d", f"r{len(prompt)}", split, len(prompt) + n)
        front = tiny_model.new_cache(0, split)
        x, pos, out = torch.tensor([prompt]), 0, []
        for _ in range(n):
            h = tiny_model.run(0, split, x, front)  # (1, T, H)
            res = await server.step(sid, encode(h, CodecConfig(method="raw")), pos)
            pos += h.shape[1]
            out.append(res.token)
            x = torch.tensor([[res.token]])
        server.close_session(sid)
        return out

    async def main():
        return await asyncio.gather(*(session(p, 5) for p in PROMPTS))

    got = asyncio.run(main())
    assert got == [greedy_reference(tiny_model, p, 5) for p in PROMPTS]
    assert server.stats()["batch_size_max"] >= 2  # steps really were batched


def test_corrupt_payload_rejected_other_session_goes_on(tiny_model):
    server = Server(tiny_model, ServerConfig(max_payload_bytes=4096))
    good, _ = _edge(tiny_model, server, fixed_planner(2, 1), device_id="good")
    sid = server.open_session("bad", "r0", 2, 16)
    h = torch.randn(1, 3, 32)
    payload = bytearray(encode(h, CodecConfig(method="raw")))
    payload[20] ^= 0xFF  # flips bits inside: the checksum no longer matches
    with pytest.raises(AdmissionError, match=r"device bad: bad payload"):
        server.step_now(sid, bytes(payload), 0)
    with pytest.raises(AdmissionError, match="max_payload_bytes"):
        server.step_now(sid, b"\0" * 5000, 0)
    with pytest.raises(AdmissionError, match=r"expected \(1, T, 32\)"):
        server.step_now(sid, encode(torch.randn(1, 3, 31), CodecConfig(method="raw")), 0)
    with pytest.raises(AdmissionError, match="position"):
        server.step_now(sid, encode(h, CodecConfig(method="raw")), 5)
    with pytest.raises(AdmissionError, match="unknown session"):
        server.step_now("nope", encode(h, CodecConfig(method="raw")), 0)
    # a few dozen bytes declaring a huge tensor are refused from the header, before any
    # allocation: an all-zero ECSQ payload is tiny whatever its declared size
    huge = encode(torch.zeros(1, 1 << 16, 32), CodecConfig(method="ecsq", rate=1.0))
    assert len(huge) < 200
    import tracemalloc
    tracemalloc.start()
    with pytest.raises(AdmissionError, match=r"declares shape \(1, 65536, 32\)"):
        server.step_now(sid, huge, 0)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1 << 20  # decoding would have allocated 8 MiB
    # the bad device's session is still usable, and another device is unaffected
    assert isinstance(server.step_now(sid, encode(h, CodecConfig(method="raw")), 0).token, int)
    rec = good.generate(Request("g", 0, tuple(PROMPTS[0]), 4))
    assert rec.ok and rec.tokens == greedy_reference(tiny_model, PROMPTS[0], 4)


def test_cloud_only_token_payload_checked(tiny_model):
    server = Server(tiny_model, ServerConfig())
    sid = server.open_session("d", "r", 0, 8)
    with pytest.raises(AdmissionError, match="outside"):
        server.step_now(sid, encode_ids(torch.tensor([[1, 500]])), 0)  # vocab is 97
    with pytest.raises(AdmissionError, match="token-id payload"):
        server.step_now(sid, encode_ids(torch.tensor([[1, 5]]))[:-2], 0)
    with pytest.raises(AdmissionError, match="magic"):
        server.step_now(sid, encode(torch.tensor([[1.0]]), CodecConfig(method="raw")), 0)
    assert isinstance(server.step_now(sid, encode_ids(torch.tensor([[1, 5]])), 0).token, int)


def test_admission_limits(tiny_model):
    kv_per_tok = tiny_model.profile.kv_bytes_per_token(1, tiny_model.num_units)
    # two sessions of 10 tokens: their KV and the worst batched step they can form
    limit = kv_per_tok * 20 + step_peak_bytes(tiny_model, [10, 10])
    server = Server(tiny_model, ServerConfig(max_sessions=2, max_kv_mib=limit / 2**20))
    a = server.open_session("d1", "r", 1, 10)
    with pytest.raises(AdmissionError, match=r"max_kv_mib=.* bytes\) already reserved"):
        server.open_session("d2", "r", 1, 11)
    b = server.open_session("d2", "r", 1, 10)
    with pytest.raises(AdmissionError, match="max_sessions=2"):
        server.open_session("d3", "r", 3, 2)
    server.close_session(a)
    server.open_session("d3", "r", 3, 2)
    assert server.stats()["rejected"][0]["device"] == "d2"
    server.close_session(b)
    sid = server.open_session("d4", "r", 1, 2)
    with pytest.raises(AdmissionError, match="admitted for"):
        server.step_now(sid, encode(torch.randn(1, 3, 32), CodecConfig(method="raw")), 0)


def test_emulated_slowdown_and_link_are_labelled(tiny_model):
    server = Server(tiny_model, ServerConfig())
    edge, _ = _edge(tiny_model, server, fixed_planner(2, 1),
                    emulation=EmulationSpec(slowdown=3.0, link=True),
                    link=LinkSpec(rate_mbps=1.0, snr_db=20.0, epsilon=0.01, bandwidth_hz=20e6))
    rec = edge.generate(Request("r", 0, tuple(PROMPTS[0]), 3))
    assert rec.ok and rec.emulated
    assert rec.edge_compute_emulated_s == pytest.approx(2.0 * rec.edge_compute_s, rel=1e-3)
    # Eq. 1 at 1 Mbit/s: a (1, 5, 32) float32 payload of ~660 bytes takes >= 5 ms
    assert rec.steps[0].transfer_emulated_s >= rec.steps[0].payload_bytes * 8 / 1e6
    assert rec.latency_s >= rec.transfer_emulated_s


def test_memory_cap_refuses_plan(tiny_model):
    server = Server(tiny_model, ServerConfig())
    edge, _ = _edge(tiny_model, server, fixed_planner(2, 1), emulation=EmulationSpec(memory_mib=0.5))
    rec = edge.generate(Request("r", 0, tuple(PROMPTS[0]), 3))
    assert not rec.ok and "memory cap" in rec.error


def test_link_schedule_reports_and_replans(tiny_model):
    calls = []

    def planner(cfg, profile, dev):
        calls.append(dev.link)
        split = 4 if dev.link.rate_mbps >= 10 else 2  # a worse link: a shallower split
        return fixed_planner(split, 1)(cfg, profile, dev)

    server = Server(tiny_model, ServerConfig())
    edge, policy = _edge(tiny_model, server, planner, link=LinkSpec(rate_mbps=50.0),
                         link_schedule=(LinkChange(at_request=1, rate_mbps=2.0),))
    recs = [edge.generate(Request(f"r{i}", i, tuple(PROMPTS[0]), 2)) for i in range(3)]
    assert [r.split for r in recs] == [4, 2, 2]
    assert [r.link_changed for r in recs] == [False, True, False]
    log = policy.decisions()
    assert [d["trigger"] for d in log] == ["register", "link"]
    assert log[1]["changed"] and log[1]["previous"]["split"] == 4 and log[1]["split"] == 2
    assert "rate_mbps 50.0 -> 2.0" in log[1]["reason"]


@pytest.mark.parametrize("precision", ["int8", "bfloat16"])
def test_lower_precision_front_still_generates(tiny_model, precision):
    server = Server(tiny_model, ServerConfig())
    edge, _ = _edge(tiny_model, server, fixed_planner(3, 1, precision=precision))
    edge.model_ref = None  # model_for must build from the shared float32 copy for int8
    edge._load = lambda ref, dtype, **kw: tiny_model if dtype == torch.float32 else _cast(tiny_model, dtype)
    rec = edge.generate(Request("r", 0, tuple(PROMPTS[0]), 4))
    assert rec.ok, rec.error
    assert rec.front_precision == precision
    front = edge.model_for(precision, 3)
    assert front is not tiny_model  # a separate copy at the front's precision
    if precision == "int8":
        assert front.front_bits == 8 and front.quantized_modules > 0


def _cast(model, dtype):
    import copy

    from slicer.actors.models.split import SplitModel

    return SplitModel(copy.deepcopy(model.hf).to(dtype), name=model.name)
def test_two_steps_of_one_session_at_once(tiny_model):
    """A client that sends a second step before the first returned gets a clear refusal;
    the first step and another device's step in the same batch are unaffected (both steps
    used to run in one batch and extend the session's KV cache twice)."""
    server = Server(tiny_model, ServerConfig(max_batch=8, batch_window_ms=50))
    split = 2
    a = server.open_session("dup", "r0", split, 16)
    b = server.open_session("other", "r1", split, 16)
    p = [1, 5, 9]
    h = tiny_model.run(0, split, torch.tensor([p]), tiny_model.new_cache(0, split))
    pay = encode(h, CodecConfig(method="raw"))
    async def main():
        return await asyncio.gather(server.step(a, pay, 0), server.step(a, pay, 0), server.step(b, pay, 0), return_exceptions=True)
    r = asyncio.run(main())
    assert isinstance(r[1], AdmissionError) and "in flight" in str(r[1])
    assert r[0].token == r[2].token == greedy_reference(tiny_model, p, 1)[0]


# ---------------------------------------------------------------------- hostile devices
# Identities as the driver assigns them at placement (slicer.orchestrator.runner.make_identities).
IDS = {"victim": "cred-victim-5Yc2", "mallory": "cred-mallory-Q8s1", "other": "cred-other-Zk0p"}


class FakeClock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def _victim_generation(model, server, prompt, n, between):
    """The victim's request driven step by step (split 2, lossless), calling
    ``between(token)`` after the open and after every step; returns its tokens."""
    split = 2
    tok = server.open_session("victim", "victim/r0", split, len(prompt) + n, credential=IDS["victim"])
    between(tok)
    front = model.new_cache(0, split)
    x, pos, out = torch.tensor([prompt]), 0, []
    for _ in range(n):
        h = model.run(0, split, x, front)  # (1, T, H)
        res = server.step_now(tok, encode(h, CodecConfig(method="raw")), pos)
        pos += h.shape[1]
        out.append(res.token)
        x = torch.tensor([[res.token]])
        between(tok)
    assert server.close_session(tok)["steps"] == n
    return out


def test_a_device_that_knows_anothers_ids_cannot_touch_its_session(tiny_model):
    """Mallory knows the victim's device id, request id and even the session's id (the
    token's public part): it cannot step, close or supersede the session, nor open in the
    victim's name; the victim's tokens stay exact throughout."""
    server = Server(tiny_model, ServerConfig(), identities=IDS)
    payload = encode(torch.randn(1, 1, 32), CodecConfig(method="raw"))
    tries = []

    def attack(victim_token):
        sid, _, secret = victim_token.rpartition(".")
        assert len(secret) >= 32  # 24 random bytes
        forged = [sid, f"{sid}.", f"{sid}.{'A' * len(secret)}", f"{sid}.{secret[:-1]}", "victim/victim/r0/1",
                  victim_token + "x", None, 7, "x" * 5000]
        for f in forged:
            with pytest.raises(AdmissionError, match="unknown session"):
                server.step_now(f, payload, 0)
            assert server.close_session(f) == {}  # closes nothing
            tries.append(f)
        # opening in the victim's name: no credential, mallory's credential, a guessed one
        for cred in (None, IDS["mallory"], "cred-victim-0000", IDS["victim"] + " "):
            with pytest.raises(AdmissionError, match="not a device id the driver assigned"):
                server.open_session("victim", "victim/r0", 2, 16, credential=cred)
        # superseding by ids from its own identity, or with a forged token
        with pytest.raises(AdmissionError, match="supersedes= is not a token of this device"):
            server.open_session("mallory", "victim/r0", 2, 16, credential=IDS["mallory"], supersedes=victim_token)
        # a guessed token supersedes nothing (and says nothing): mallory only opens its own
        own = server.open_session("mallory", "victim/r0", 2, 16, credential=IDS["mallory"], supersedes=f"{sid}.guess")
        assert server.stats()["open_sessions"] == 2 and server.close_session(own)["steps"] == 0
        assert server.stats()["open_sessions"] == 1  # only the victim's

    got = _victim_generation(tiny_model, server, PROMPTS[0], 6, attack)
    assert got == greedy_reference(tiny_model, PROMPTS[0], 6)
    st = server.stats()
    assert st["auth_failures"] == 4 * 7 and st["open_sessions"] == 0 and st["reserved_kv_bytes"] == 0
    assert st["steps_by_device"] == {"victim": 6}
    assert set(st["bad_payloads_by_device"]) <= {"victim"} and not st["bad_payloads_by_device"].get("victim")


def test_a_token_supersedes_only_its_own_session(tiny_model):
    server = Server(tiny_model, ServerConfig(max_sessions_per_device=1), identities=IDS)
    old = server.open_session("victim", "r0", 2, 16, credential=IDS["victim"])
    new = server.open_session("victim", "r0", 2, 16, credential=IDS["victim"], supersedes=old)
    assert new != old and server.stats()["open_sessions"] == 1
    with pytest.raises(AdmissionError, match="unknown session"):
        server.step_now(old, b"", 0)
    # a token of a session that is gone (closed, expired, a restarted server) supersedes nothing
    server.close_session(new)
    again = server.open_session("victim", "r0", 2, 16, credential=IDS["victim"], supersedes=old)
    assert server.stats()["open_sessions"] == 1 and server.close_session(again)


def test_a_device_rotating_ids_cannot_get_a_registered_device_refused(tiny_model):
    """Ids not issued by the driver are refused at the door (and never counted against
    anyone); a registered device taking session after session is stopped where the
    sessions kept for registered devices holding none begin."""
    server = Server(tiny_model, ServerConfig(max_sessions=6, max_sessions_per_device=10), identities=IDS)
    for i in range(200):
        with pytest.raises(AdmissionError, match="not a device id the driver assigned"):
            server.open_session(f"rotating-{i}", "r", 2, 8, credential=IDS["mallory"])
    held = []
    for i in range(10):
        try:
            held.append(server.open_session("mallory", f"m/r{i}", 2, 8, credential=IDS["mallory"]))
        except AdmissionError as e:
            assert "kept for registered devices that hold none" in str(e)
            break
    assert len(held) == 6 - 2  # victim and other keep one each
    v = server.open_session("victim", "v/r0", 2, 8, credential=IDS["victim"])
    o = server.open_session("other", "o/r0", 2, 8, credential=IDS["other"])
    st = server.stats()
    assert st["open_sessions"] == 6 and st["auth_failures"] == 200
    assert {r["device"] for r in st["rejected"]} == {"mallory"}  # no refusal was booked on a rotated id
    assert server.close_session(v) and server.close_session(o)


def test_open_rate_per_identity(tiny_model):
    clock = FakeClock()
    server = Server(tiny_model, ServerConfig(open_rate_per_s=2.0, open_burst=5), identities=IDS, clock=clock)
    for i in range(5):
        server.close_session(server.open_session("mallory", f"r{i}", 2, 8, credential=IDS["mallory"]))
    with pytest.raises(AdmissionError, match=r"open_burst=5 .* open_rate_per_s=2; next allowed in 0\.500 s"):
        server.open_session("mallory", "r5", 2, 8, credential=IDS["mallory"])
    # failing authentication in the victim's name does not spend the victim's budget
    for _ in range(50):
        with pytest.raises(AdmissionError, match="not a device id"):
            server.open_session("victim", "x", 2, 8, credential="wrong")
    for i in range(5):
        server.close_session(server.open_session("victim", f"v{i}", 2, 8, credential=IDS["victim"]))
    clock.t += 0.5  # one token back at 2/s
    server.close_session(server.open_session("mallory", "r6", 2, 8, credential=IDS["mallory"]))
    with pytest.raises(AdmissionError, match="open-rate|open_burst"):
        server.open_session("mallory", "r7", 2, 8, credential=IDS["mallory"])
    assert [r["what"] for r in server.stats()["rejected"]] == ["open-rate", "open-rate"]


def test_idle_session_expires_and_frees_its_kv(tiny_model):
    clock = FakeClock()
    server = Server(tiny_model, ServerConfig(session_ttl_s=30.0), clock=clock)
    kv = int(tiny_model.profile.kv_bytes_per_token(2, tiny_model.num_units)) * 16
    idle = server.open_session("d1", "r", 2, 16)
    busy = server.open_session("d2", "r", 2, 16)
    live = server.open_session("d3", "r", 2, 16)
    assert server.stats()["reserved_kv_bytes"] == 3 * kv
    h = tiny_model.run(0, 2, torch.tensor([PROMPTS[1]]), tiny_model.new_cache(0, 2))
    st = server._make_step(busy, encode(h, CodecConfig(method="raw")), 0, {})  # a step in flight
    clock.t += 20
    server.step_now(live, encode(h, CodecConfig(method="raw")), 0)  # activity resets its idle time
    clock.t += 15  # idle: 35 s > 30; busy: in flight; live: 15 s
    assert server.expire_idle() == [idle.rpartition(".")[0]]
    assert server.stats()["reserved_kv_bytes"] == 2 * kv and server.stats()["expired_sessions"] == 1
    with pytest.raises(SessionExpiredError, match=r"expired after 35\.0 s idle \(session_ttl_s=30\)"):
        server.step_now(idle, encode(h, CodecConfig(method="raw")), 0)
    assert server.close_session(idle) == {}
    server._release(st)  # its step ends: idle from now
    clock.t += 31
    # expiry also happens at the step itself, between sweeps
    with pytest.raises(SessionExpiredError):
        server.step_now(busy, encode(h, CodecConfig(method="raw")), 0)
    # an open sweeps the rest: the KV they held is free again
    server.open_session("d4", "r", 2, 16)
    assert server.stats()["open_sessions"] == 1 and server.stats()["reserved_kv_bytes"] == kv
    # a wrong secret on an expired id is "unknown", not "expired"
    with pytest.raises(AdmissionError, match="unknown session"):
        server.step_now(idle.rpartition(".")[0] + ".wrong", b"", 0)


@pytest.mark.parametrize("split,max_tokens,needle", [
    (True, 8, "split=True is invalid: allowed an integer"), (False, 8, "split=False"), (2.0, 8, "split=2.0"),
    (2, True, "max_tokens=True is invalid"), (2, 8.0, "max_tokens=8.0"), (10**400, 8, "<int of 1329 bits>"),
])
def test_booleans_and_floats_are_not_integers(tiny_model, split, max_tokens, needle):
    server = Server(tiny_model, ServerConfig())
    with pytest.raises(AdmissionError, match=re.escape(needle)):
        server.open_session("d", "r", split, max_tokens)
    assert server.stats()["open_sessions"] == 0


def test_kv_is_kept_for_registered_devices_that_hold_none(tiny_model):
    kv = int(tiny_model.profile.kv_bytes_per_token(2, tiny_model.num_units)) * 16  # one session
    limit = 6 * kv + step_peak_bytes(tiny_model, [16] * 6)  # six sessions' KV and their worst batched step
    server = Server(tiny_model, ServerConfig(max_kv_mib=limit / 2**20, max_kv_mib_per_device=limit / 2**20,
                                             max_sessions_per_device=10, kv_kept_per_idle_device=kv), identities=IDS)
    held = [server.open_session("mallory", "m/r0", 2, 16, credential=IDS["mallory"])]
    with pytest.raises(AdmissionError, match=rf"and {2 * kv} kept for 2 registered devices that hold none"):
        while True:
            held.append(server.open_session("mallory", f"m/r{len(held)}", 2, 16, credential=IDS["mallory"]))
    assert len(held) == 4 and server.stats()["reserved_kv_bytes"] == 4 * kv
    server.open_session("victim", "v/r0", 2, 16, credential=IDS["victim"])
    server.open_session("other", "o/r0", 2, 16, credential=IDS["other"])
    assert server.stats()["reserved_kv_bytes"] == 6 * kv


def test_run_summary_shows_what_the_server_refused(tiny_model):
    """The run summary carries the server's refusals: forged credentials, idle sessions
    reclaimed, bad payloads, per device (they were in ``stats()`` but not in summary.json)."""
    from slicer.orchestrator.results import build_summary

    now = [0.0]
    server = Server(tiny_model, ServerConfig(session_ttl_s=5.0, max_sessions=1), identities={"dev": "cred-dev"},
                    clock=lambda: now[0])
    with pytest.raises(AdmissionError):
        server.open_session("dev", "dev/r0", 2, 16, credential="forged")
    server.open_session("dev", "dev/r0", 2, 16, credential="cred-dev")
    now[0] = 10.0
    server.open_session("dev", "dev/r1", 2, 16, credential="cred-dev")  # expiry runs at every open
    with pytest.raises(AdmissionError, match="server refused"):  # one session at a time: refused, counted
        server.open_session("dev", "dev/r2", 2, 16, credential="cred-dev")
    s = build_summary({"name": "t"}, [], server.stats(), [], {}, 1.0, {"backend": "in-process"})["server"]
    assert (s["auth_failures"], s["expired_sessions"]) == (1, 1)
    assert s["rejected_total"] == 1 and s["rejected"][0]["device"] == "dev" and s["bad_payloads_by_device"] == {}
