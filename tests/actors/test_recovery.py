"""RecoveringServerClient: a server that "restarts" (loses every session) mid-generation
is rebuilt by replay and the tokens equal an undisturbed run; a server that stays gone
ends in a ServerLostError naming the cause; other errors pass through."""
from __future__ import annotations

import pytest

from slicer.actors.edge import EdgeConfig, EdgeDevice, InProcessPolicy
from slicer.actors.policy_actor import Policy, PolicyConfig
from slicer.actors.protocol import AdmissionError, Request
from slicer.actors.recovery import (
    RecoveringServerClient,
    ServerLostError,
    ServerRestarted,
    server_lost,
)
from slicer.actors.server import Server, ServerConfig
from tests.actors.conftest import fixed_planner, greedy_reference

PROMPTS = [[1, 5, 9, 13, 2], [3, 4], [7, 8, 9, 10, 11, 12, 13]]


class FlakyServer:
    """An in-process server that dies at given step numbers: the failing call raises
    ``ServerRestarted`` (as an in-flight Ray call to a dead actor raises
    ``ActorDiedError``) and the server comes back EMPTY (a fresh ``Server``). ``down``:
    how many further calls fail while it is 'restarting'."""

    def __init__(self, model, die_at_steps: set[int], down: int = 0, stay_dead: bool = False):
        self.model, self.die_at, self.down, self.stay_dead = model, set(die_at_steps), down, stay_dead
        self.server = Server(model, ServerConfig())
        self.steps = 0
        self.restarts = 0
        self._down_left = 0

    def _alive(self):
        if self.stay_dead and self.restarts:
            raise ServerRestarted("server actor died and was not restarted")
        if self._down_left > 0:
            self._down_left -= 1
            raise ServerRestarted("server restarting")

    def open_session(self, device_id, request_id, split, max_tokens, trace_ctx=None, supersedes=None):
        self._alive()
        return self.server.open_session(device_id, request_id, split, max_tokens, trace_ctx or {}, supersedes=supersedes)

    def step(self, session_id, payload, position, trace_ctx=None):
        self._alive()
        self.steps += 1
        if self.steps in self.die_at:
            self.server = Server(self.model, ServerConfig())  # restarted: every session gone
            self.restarts += 1
            self._down_left = self.down
            raise ServerRestarted(f"server died at step {self.steps}")
        return self.server.step_now(session_id, payload, position, trace_ctx or {})

    def close_session(self, session_id, trace_ctx=None):
        self._alive()
        return self.server.close_session(session_id, trace_ctx or {})


def _edge(model, client, split, w):
    policy = Policy(PolicyConfig(name="fixed"), model.profile, planner=fixed_planner(split, w))
    return EdgeDevice(EdgeConfig(device_id="dev-0", device_class="raspberry-pi-5"), "unused", client,
                      InProcessPolicy(policy), model=model)


@pytest.mark.parametrize("split,w", [(2, 1), (0, 1), (3, 3)])  # split, cloud-only, local-then-offload
def test_server_restart_mid_generation_is_replayed_exactly(tiny_model, split, w):
    flaky = FlakyServer(tiny_model, die_at_steps={3, 9}, down=2)
    client = RecoveringServerClient(flaky, backoff_s=0.0)
    edge = _edge(tiny_model, client, split, w)
    for i, prompt in enumerate(PROMPTS):
        rec = edge.generate(Request(f"r{i}", i, tuple(prompt), 6))
        assert rec.ok, rec.error
        assert rec.tokens == greedy_reference(tiny_model, prompt, 6)
    assert flaky.restarts == 2
    ev = client.drain_events()
    assert len(ev) == 2 and all(e.cause.startswith("ServerRestarted") for e in ev)
    assert any(e.replayed_steps > 0 for e in ev)  # a mid-request loss replayed what was sent
    assert flaky.server.stats()["open_sessions"] == 0  # rebuilt sessions were closed too


def test_server_that_stays_dead_fails_with_the_cause(tiny_model):
    flaky = FlakyServer(tiny_model, die_at_steps={2}, stay_dead=True)
    client = RecoveringServerClient(flaky, max_recoveries=2, backoff_s=0.0)
    edge = _edge(tiny_model, client, 2, 1)
    rec = edge.generate(Request("r0", 0, tuple(PROMPTS[0]), 5))
    assert not rec.ok
    assert "ServerLostError" in rec.error and "could not be rebuilt" in rec.error
    assert "not restarted" in rec.error  # the last cause is named
    assert len(rec.tokens) == 1  # the token before the loss is kept, nothing invented


def test_recovery_gives_up_within_its_time_bound(tiny_model):
    flaky = FlakyServer(tiny_model, die_at_steps={1}, stay_dead=True)
    slept = []
    client = RecoveringServerClient(flaky, max_recoveries=50, recovery_timeout_s=0.0, backoff_s=0.0,
                                    sleep=slept.append)
    with pytest.raises(ServerLostError):
        client.open_session("d", "r", 2, 16)
        sid = client.open_session("d", "r", 2, 16)
        client.step(sid, b"x", 0)
    assert len(slept) <= 2


def test_non_loss_errors_pass_through_without_replay(tiny_model):
    flaky = FlakyServer(tiny_model, die_at_steps=set())
    client = RecoveringServerClient(flaky, backoff_s=0.0)
    sid = client.open_session("d", "r", 2, 16)
    with pytest.raises(AdmissionError, match="bad payload"):
        client.step(sid, b"garbage", 0)
    assert client.drain_events() == []
    assert server_lost(AdmissionError("unknown session 'x' (closed, never opened, or the server restarted)"))
    assert not server_lost(AdmissionError("server refused device d: sessions"))
    assert not server_lost(TimeoutError("server.step did not answer"))


def test_per_device_limits_refuse_one_device_and_not_the_others(tiny_model):
    kv_one = int(tiny_model.profile.kv_bytes_per_token(2, tiny_model.num_units)) * 16
    server = Server(tiny_model, ServerConfig(max_sessions_per_device=2, max_kv_mib_per_device=3 * kv_one / 2**20))
    server.open_session("greedy", "r0", 2, 16)
    server.open_session("greedy", "r1", 2, 16)
    with pytest.raises(AdmissionError, match="device greedy.*max_sessions_per_device=2"):
        server.open_session("greedy", "r2", 2, 16)
    with pytest.raises(AdmissionError, match="device other.*max_kv_mib_per_device"):
        server.open_session("other", "r0", 2, 64)  # 4 x kv_one > 3 x kv_one
    server.open_session("other", "r1", 2, 16)  # other devices still get in
    st = server.stats()
    assert [r["what"] for r in st["rejected"]] == ["device-sessions", "device-kv"]
    assert st["open_sessions"] == 3 and st["reserved_kv_bytes"] == 3 * kv_one


def test_reopening_a_request_supersedes_its_old_session(tiny_model):
    """A restarted edge regenerates its request: the dead edge's session is released. The
    restarted actor holds the device's driver-issued credential, not the old token."""
    server = Server(tiny_model, ServerConfig(max_sessions_per_device=1), identities={"d": "cred-d"})
    server.open_session("d", "r0", 2, 16, credential="cred-d")
    sid = server.open_session("d", "r0", 2, 16, credential="cred-d")  # no refusal: the first one is dropped
    st = server.stats()
    assert st["open_sessions"] == 1 and st["reserved_kv_bytes"] == int(
        tiny_model.profile.kv_bytes_per_token(2, tiny_model.num_units)) * 16
    server.close_session(sid)
    assert server.stats()["reserved_kv_bytes"] == 0


def test_an_expired_session_is_reopened_by_replay_and_tokens_stay_exact(tiny_model):
    """The device pauses past ``session_ttl_s`` mid-request: its next step gets a
    SessionExpiredError (its KV cache was freed), the recovery path reopens with its
    credential, replays what it sent, and the tokens equal an undisturbed run."""
    from slicer.actors.edge import InProcessServer
    from slicer.actors.server import SessionExpiredError

    now = [0.0]
    server = Server(tiny_model, ServerConfig(session_ttl_s=30.0), identities={"dev-0": "cred-0"}, clock=lambda: now[0])
    calls = []

    class PausingClient(InProcessServer):
        def step(self, session_id, payload, position, trace_ctx=None):
            calls.append(position)
            if len(calls) == 4:
                now[0] += 31.0  # the device went quiet: idle past the TTL, swept by the next call
            return super().step(session_id, payload, position, trace_ctx)

    client = RecoveringServerClient(PausingClient(server, "cred-0"), backoff_s=0.0)
    edge = _edge(tiny_model, client, 2, 1)
    rec = edge.generate(Request("r0", 0, tuple(PROMPTS[2]), 7))
    assert rec.ok, rec.error
    assert rec.tokens == greedy_reference(tiny_model, PROMPTS[2], 7)
    ev = client.drain_events()
    assert len(ev) == 1 and ev[0].cause.startswith("SessionExpiredError") and ev[0].replayed_steps == 3
    st = server.stats()
    assert st["expired_sessions"] == 1 and st["open_sessions"] == 0 and st["reserved_kv_bytes"] == 0
    assert server_lost(SessionExpiredError("session 'x' expired after 31.0 s idle"))
