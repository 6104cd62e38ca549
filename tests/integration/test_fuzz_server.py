"""Fuzz of the server's payload path (not only the decoder): one device sends corrupt
payloads (truncated, bit-flipped, random, oversized, wrong shape, NaN, wrong type, wrong
position, out-of-vocabulary ids) into the BATCHING server while seven devices generate.
The seven finish with exactly the unsplit greedy tokens, the bad device gets an
``AdmissionError`` naming itself and the defect for every bad payload, its session stays
usable, and the server's books show the bad payloads against that device only.

The server runs as in its actor (``Server.step`` coroutines on an event loop feeding
``_batch_loop``; one compute thread), here on a loop in a background thread; each device
is a thread, so bad and good steps land in the same batches."""
from __future__ import annotations

import asyncio
import random
import threading

import pytest
import torch

from slicer.actors.edge import EdgeConfig, EdgeDevice, InProcessPolicy
from slicer.actors.models import load_model
from slicer.actors.policy_actor import Policy, PolicyConfig
from slicer.actors.protocol import AdmissionError, Plan, Request, encode_ids
from slicer.actors.server import Server, ServerConfig
from slicer.codec import CodecConfig, encode
from tests.integration.conftest import PROMPTS, TINY_LLAMA

pytestmark = pytest.mark.integration

MAX_PAYLOAD = 16 << 10
NEW_TOKENS = 10


class LoopServer:
    """An async ``Server`` on its own event loop thread, called from device threads."""

    def __init__(self, server: Server):
        self.server = server
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def open_session(self, device_id, request_id, split, max_tokens, trace_ctx=None, supersedes=None):
        return self.server.open_session(device_id, request_id, split, max_tokens, trace_ctx or {}, supersedes=supersedes)

    def step(self, session_id, payload, position, trace_ctx=None):
        fut = asyncio.run_coroutine_threadsafe(self.server.step(session_id, payload, position, trace_ctx or {}), self.loop)
        return fut.result(timeout=60)  # nothing waits forever

    def close_session(self, session_id, trace_ctx=None):
        return self.server.close_session(session_id, trace_ctx or {})

    def stop(self):
        async def cancel_all():
            for t in asyncio.all_tasks():
                if t is not asyncio.current_task():
                    t.cancel()

        asyncio.run_coroutine_threadsafe(cancel_all(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def _plan(split):
    def planner(cfg, profile, dev):
        return Plan.fixed(split, 1, profile.num_layers, "lossless", reason="fuzz", predicted_memory_bytes=1e6)
    return planner


def _corruptions(rng: random.Random, good: bytes, hidden: int) -> list[tuple[str, object]]:
    """(kind, payload) pairs; every one must be refused."""
    raw = CodecConfig(method="raw")
    out: list[tuple[str, object]] = []
    for _ in range(25):
        cut = rng.randrange(0, len(good))
        out.append(("truncated", good[:cut]))
        b = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        out.append(("bit-flipped", bytes(b)))
        out.append(("random", rng.randbytes(rng.randint(0, 600))))
        out.append(("random-after-magic", good[:4] + rng.randbytes(rng.randint(0, 300))))
    out += [
        ("oversized", b"\0" * (MAX_PAYLOAD + 1)),
        ("oversized-valid", encode(torch.randn(1, MAX_PAYLOAD // (4 * hidden) + 1, hidden), raw)),
        ("wrong-hidden", encode(torch.randn(1, 3, hidden + 1), raw)),
        ("wrong-batch", encode(torch.randn(2, 3, hidden), raw)),
        ("wrong-rank", encode(torch.randn(3, 1, 1, hidden), raw)),
        ("empty-tokens", encode(torch.randn(1, 0, hidden), raw)),
        ("nan", encode(torch.full((1, 2, hidden), float("nan")), raw)),
        ("inf", encode(torch.full((1, 2, hidden), float("inf")), raw)),
        ("token-ids-into-feature-session", encode_ids(torch.tensor([[1, 2, 3]]))),
        ("too-many-tokens", encode(torch.randn(1, 64, hidden), raw)),
        ("not-bytes-str", "hello"),
        ("not-bytes-list", [1, 2, 3]),
        ("not-bytes-none", None),
        ("empty", b""),
    ]
    return out



def _assert_good_devices_exact(results: dict, model) -> None:
    """Every request of the seven good devices completed with the unsplit model's tokens."""
    ref: dict = {}
    for i in range(7):
        for r in results[f"good-{i}"]:
            assert r.ok, r.error
            p = tuple(PROMPTS[(i + r.index) % len(PROMPTS)])
            if p not in ref:
                ref[p] = _reference(model, list(p), NEW_TOKENS)
            assert list(r.tokens) == ref[p], r.request_id

def test_corrupt_payloads_from_one_device_while_seven_generate(tiny_model_dir):
    torch.set_num_threads(1)
    model = load_model(str(tiny_model_dir))
    hidden = TINY_LLAMA["hidden_size"]
    # The server's own copy of the model, as in its actor (a separate process): the edges'
    # fronts run in their own threads meanwhile.
    server = Server(load_model(str(tiny_model_dir)), ServerConfig(max_batch=8, batch_window_ms=3,
                                                                  max_payload_bytes=MAX_PAYLOAD))
    srv = LoopServer(server)
    rng = random.Random(1234)
    results: dict[str, list] = {}
    errors: list[tuple[str, str]] = []
    crashed: list[BaseException] = []
    split = 2
    good_payload = encode(model.run(0, split, torch.tensor([PROMPTS[0]]), model.new_cache(0, split)),
                          CodecConfig(method="raw"))  # a valid (1, 5, H) prefill feature

    def good_device(i: int):
        try:
            policy = Policy(PolicyConfig(name="fixed"), model.profile, planner=_plan(split))
            dev = EdgeDevice(EdgeConfig(device_id=f"good-{i}", device_class="raspberry-pi-5"), "unused", srv,
                             InProcessPolicy(policy), model=model)
            results[dev.cfg.device_id] = [
                dev.generate(Request(f"good-{i}/r{k}", k, tuple(PROMPTS[(i + k) % len(PROMPTS)]), NEW_TOKENS))
                for k in range(3)]
        except BaseException as e:  # noqa: BLE001 (reported below)
            crashed.append(e)

    def bad_device():
        try:
            sid = srv.open_session("bad", "bad/r0", split, 32)
            cases = _corruptions(rng, good_payload, hidden)
            rng.shuffle(cases)
            for kind, p in cases:
                try:
                    srv.step(sid, p, 0)
                except AdmissionError as e:
                    errors.append((kind, str(e)))
                else:
                    errors.append((kind, "ACCEPTED"))
            # wrong positions and a forged session id
            for kind, pos, s in (("position-ahead", 3, sid), ("position-negative", -1, sid), ("forged-session", 0, "good-0/x/1")):
                try:
                    srv.step(s, good_payload, pos)
                except AdmissionError as e:
                    errors.append((kind, str(e)))
                else:
                    errors.append((kind, "ACCEPTED"))
            # the bad device's own session is intact: a valid prefill at position 0 works
            results["bad"] = [srv.step(sid, good_payload, 0)]
            srv.close_session(sid)
        except BaseException as e:  # noqa: BLE001
            crashed.append(e)

    threads = [threading.Thread(target=good_device, args=(i,)) for i in range(7)] + [threading.Thread(target=bad_device)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(240)
        assert not any(t.is_alive() for t in threads), "a device thread hung"
    finally:
        srv.stop()
    assert not crashed, crashed

    _assert_good_devices_exact(results, model)
    accepted = [k for k, msg in errors if msg == "ACCEPTED"]
    assert not accepted, accepted
    assert len(errors) >= 100
    for kind, msg in errors:
        if kind != "forged-session":
            assert msg.startswith("device bad: bad payload"), (kind, msg)
        else:
            assert "unknown session" in msg
    assert isinstance(results["bad"][0].token, int)
    st = server.stats()
    assert st["bad_payloads_by_device"] == {"bad": len(errors) - 1}  # the forged id never reached a session
    assert set(st["bad_payloads_by_device"]) == {"bad"}  # no good device was blamed
    assert st["batch_size_max"] >= 2  # good and bad steps really shared batches
    assert st["open_sessions"] == 0


def _reference(model, prompt, n):
    cache = model.new_cache(0, model.num_units)
    x, out = torch.tensor([prompt]), []
    for _ in range(n):
        logits = model.run(0, model.num_units, x, cache)  # (1, T, V)
        out.append(int(logits[0, -1].argmax()))
        x = torch.tensor([[out[-1]]])
    return out


def test_malformed_identity_and_trace_carrier_are_contained(tiny_model_dir):
    """Arguments besides the payload: ids must be short strings; a trace carrier that is
    not str -> str is dropped (it reaches tracing code inside a shared batch)."""
    model = load_model(str(tiny_model_dir))
    server = Server(model, ServerConfig())
    for bad in (None, 7, "", "x" * 300, ("a",)):
        with pytest.raises(AdmissionError, match="device_id=.* is invalid"):
            server.open_session(bad, "r", 2, 8)
        with pytest.raises(AdmissionError, match="request_id=.* is invalid"):
            server.open_session("d", bad, 2, 8)
    sid = server.open_session("d", "r", 2, 16)
    payload = encode(model.run(0, 2, torch.tensor([PROMPTS[1]]), model.new_cache(0, 2)), CodecConfig(method="raw"))
    res = server.step_now(sid, payload, 0, {"traceparent": ["not", "a", "string"], 3: "x", "k": "v" * 10000})
    assert isinstance(res.token, int)
    st = server._make_step(sid, payload, len(PROMPTS[1]), [("not", "a dict")])
    assert st.trace_ctx == {}


class _WithCredential:
    """A device's client of the shared ``LoopServer``: adds its driver-issued credential."""

    def __init__(self, srv: LoopServer, credential: str):
        self.srv, self.credential = srv, credential

    def open_session(self, device_id, request_id, split, max_tokens, trace_ctx=None, supersedes=None):
        return self.srv.server.open_session(device_id, request_id, split, max_tokens, trace_ctx or {},
                                            credential=self.credential, supersedes=supersedes)

    def step(self, session_id, payload, position, trace_ctx=None):
        return self.srv.step(session_id, payload, position, trace_ctx)

    def close_session(self, session_id, trace_ctx=None):
        return self.srv.close_session(session_id, trace_ctx)


def test_identity_attacks_while_seven_generate(tiny_model_dir):
    """A registered device that knows every other device's id and request ids (and how
    session ids are formed) attacks sessions and identities while seven devices generate
    through the batching server: it cannot step, close or supersede their sessions, open
    in their names, nor get any of them refused; their tokens stay exact."""
    torch.set_num_threads(1)
    model = load_model(str(tiny_model_dir))
    ids = {f"good-{i}": f"cred-good-{i}-{i * 7919}" for i in range(7)}
    ids["mallory"] = "cred-mallory"
    # The server's own copy of the model, as in its actor (a separate process).
    server = Server(load_model(str(tiny_model_dir)), ServerConfig(max_batch=8, batch_window_ms=3, max_sessions=12, max_sessions_per_device=12,
                                        open_rate_per_s=50.0, open_burst=20), identities=ids)
    srv = LoopServer(server)
    split, results, crashed = 2, {}, []
    outcomes: dict[str, int] = {}
    done = threading.Event()
    payload = encode(model.run(0, split, torch.tensor([PROMPTS[1]]), model.new_cache(0, split)), CodecConfig(method="raw"))

    def good_device(i: int):
        try:
            policy = Policy(PolicyConfig(name="fixed"), model.profile, planner=_plan(split))
            dev = EdgeDevice(EdgeConfig(device_id=f"good-{i}", device_class="raspberry-pi-5"), "unused",
                             _WithCredential(srv, ids[f"good-{i}"]), InProcessPolicy(policy), model=model)
            results[f"good-{i}"] = [
                dev.generate(Request(f"good-{i}/r{k}", k, tuple(PROMPTS[(i + k) % len(PROMPTS)]), NEW_TOKENS))
                for k in range(3)]
        except BaseException as e:  # noqa: BLE001
            crashed.append(e)

    def count(kind: str, fn):
        try:
            fn()
            outcomes[kind + ":accepted"] = outcomes.get(kind + ":accepted", 0) + 1
        except AdmissionError:
            outcomes[kind] = outcomes.get(kind, 0) + 1

    def mallory():
        rng = random.Random(7)
        mine = _WithCredential(srv, ids["mallory"])
        try:
            while not done.is_set():
                i, k, n = rng.randrange(7), rng.randrange(3), rng.randrange(1, 60)
                guess = f"good-{i}/good-{i}/r{k}/{n}"  # a session id as the server forms them
                forged = f"{guess}.{rng.randbytes(24).hex()}"
                count("step", lambda f=forged: srv.step(f, payload, 0))
                if srv.close_session(forged) != {}:
                    outcomes["close:accepted"] = outcomes.get("close:accepted", 0) + 1
                try:  # a guessed token of a session that exists is refused; of none, supersedes nothing
                    own = mine.open_session("mallory", f"good-{i}/r{k}", split, 16, supersedes=forged)
                    outcomes["supersede:own-session"] = outcomes.get("supersede:own-session", 0) + 1
                    mine.close_session(own)
                except AdmissionError:
                    outcomes["supersede"] = outcomes.get("supersede", 0) + 1
                count("impersonate", lambda i=i, k=k: server.open_session(f"good-{i}", f"good-{i}/r{k}", split, 16,
                                                                          credential=ids["mallory"]))
                count("rotate", lambda: server.open_session(f"rot-{rng.random()}", "r", split, 16,
                                                            credential=ids["mallory"]))
                count("flood", lambda: mine.open_session("mallory", f"m/{rng.random()}", split, 16))
        except BaseException as e:  # noqa: BLE001
            crashed.append(e)

    threads = [threading.Thread(target=good_device, args=(i,)) for i in range(7)]
    attacker = threading.Thread(target=mallory)
    try:
        attacker.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join(240)
        done.set()
        attacker.join(30)
        assert not any(t.is_alive() for t in threads + [attacker]), "a thread hung"
    finally:
        srv.stop()
    assert not crashed, crashed
    _assert_good_devices_exact(results, model)
    accepted = {k: v for k, v in outcomes.items() if k.endswith(":accepted") and not k.startswith("flood")}
    assert not accepted, accepted
    assert outcomes.get("step", 0) >= 20 and outcomes.get("impersonate", 0) >= 20 and outcomes.get("rotate", 0) >= 20
    st = server.stats()
    assert {r["device"] for r in st["rejected"]} <= {"mallory"}  # no good device was ever refused
    assert st["requests_by_device"].get("mallory", 0) <= 20 + 50 * 60  # the flood is rate-limited
    assert all(st["steps_by_device"][f"good-{i}"] == 3 * NEW_TOKENS for i in range(7))
    assert st["open_sessions"] <= 5  # only mallory's flood is left: at most 12 - 7 kept for the others
    print(f"identity attacks refused while 7 devices generated: {dict(sorted(outcomes.items()))}; "
          f"auth failures {st['auth_failures']}, mallory refusals {st['rejected_total']}")
