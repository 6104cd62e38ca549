"""Batches that never idle: the server computes as soon as every open session that can
send has sent (one device never waits a window for nobody), and N devices stepping
together form batches of N."""
from __future__ import annotations

import asyncio
import time

import pytest
import torch

from slicer.actors.server import Server, ServerConfig
from slicer.codec import CodecConfig, encode

pytestmark = pytest.mark.usefixtures("one_thread")
LOSSLESS = CodecConfig(method="raw")
SPLIT = 2


def _device(server, model, i, n_steps, results):
    """An edge in a token loop: prefill, then one token per step, each sent as soon as
    the previous token came back."""

    async def run():
        sid = server.open_session(f"dev-{i}", "r", SPLIT, 4 + n_steps)
        x = model.run(0, SPLIT, torch.tensor([[3 + i, 4, 5]]))  # (1, 3, H)
        pos = 0
        for _ in range(n_steps):
            res = await server.step(sid, encode(x, LOSSLESS), pos)
            pos += x.shape[1]
            x = model.run(0, SPLIT, torch.tensor([[res.token]]), position=pos)
            results.append(res)
        server.close_session(sid)

    return run()


def test_one_device_never_waits_the_window(tiny_model):
    """With a 400 ms window, one device's 6 steps take far less than one window each:
    the only open session has sent, so the batch is computed at once."""
    server = Server(tiny_model, ServerConfig(batch_window_ms=400.0))
    res: list = []
    t0 = time.perf_counter()
    asyncio.run(_device(server, tiny_model, 0, 6, res))
    assert time.perf_counter() - t0 < 0.4 * 2  # the old loop waited 6 x 0.4 s
    assert all(r.queue_s < 0.2 for r in res)


def test_n_devices_batch_together_and_leave_no_one_waiting(tiny_model):
    """Four devices in lockstep: every batch after the first holds all four (mean batch
    = N), and no step waits the long window for a session that already sent."""
    server = Server(tiny_model, ServerConfig(batch_window_ms=300.0, max_batch=16))
    res: list = []

    async def main():
        await asyncio.gather(*(_device(server, tiny_model, i, 5, res) for i in range(4)))

    t0 = time.perf_counter()
    asyncio.run(main())
    assert time.perf_counter() - t0 < 5 * 0.3  # never a full window per step
    assert server.batch_sizes.count(4) >= 4, server.batch_sizes
    assert sum(server.batch_sizes) == 20


def test_a_quiet_session_is_not_waited_for(tiny_model):
    """A session opened long ago that never steps (an edge in its local phase) does not
    hold up the others beyond its liveness horizon."""
    server = Server(tiny_model, ServerConfig(batch_window_ms=300.0))
    server.open_session("quiet", "r", SPLIT, 10)
    for s in server._sessions.values():
        s.last_t -= 60.0  # quiet for a minute
    res: list = []
    t0 = time.perf_counter()
    asyncio.run(_device(server, tiny_model, 1, 4, res))
    assert time.perf_counter() - t0 < 0.6


def test_window_bounds_the_wait_for_a_live_session(tiny_model):
    """A live session that has not sent makes a queued step wait at most the window."""
    server = Server(tiny_model, ServerConfig(batch_window_ms=150.0))
    server.open_session("live", "r", SPLIT, 10)  # just opened: counts as about to send
    res: list = []
    t0 = time.perf_counter()
    asyncio.run(_device(server, tiny_model, 1, 1, res))
    dt = time.perf_counter() - t0
    assert 0.12 <= res[0].queue_s and dt < 1.0



def _run_devices(server, model, *, start_s, gap_s, steps: int = 8, n: int = 4) -> dict[int, list]:
    """``n`` devices of ``steps`` steps each: device ``i`` starts after ``start_s(i)`` and
    takes ``gap_s(i)`` between its token and its next step (its edge's round trip).
    Returns each device's step results."""
    out: dict[int, list] = {i: [] for i in range(n)}

    async def device(i):
        sid = server.open_session(f"dev-{i}", "r", SPLIT, 2 + 2 * steps)
        x = model.run(0, SPLIT, torch.tensor([[3 + i, 4]]))
        pos = 0
        await asyncio.sleep(start_s(i))
        for _ in range(steps):
            res = await server.step(sid, encode(x, LOSSLESS), pos)
            out[i].append(res)
            pos += x.shape[1]
            await asyncio.sleep(gap_s(i))
            x = model.run(0, SPLIT, torch.tensor([[res.token]]), position=pos)
        server.close_session(sid)

    async def main():
        await asyncio.gather(*(device(i) for i in range(n)))

    asyncio.run(main())
    return out


def test_cohorts_merge_when_a_batch_takes_longer_than_a_round_trip(tiny_model):
    """Devices whose next step comes a few ms after their token (an edge's round trip)
    are waited for up to one batch's compute, so N devices form batches of N instead of
    two alternating cohorts of N/2 (a 0 ms window alone would compute each arrival)."""
    server = Server(tiny_model, ServerConfig(batch_window_ms=0.0, max_batch=16))
    compute = server._compute

    def slow_compute(steps):  # a batch that takes 30 ms, as a big model's would
        time.sleep(0.03)
        return compute(steps)

    server._compute = slow_compute
    # staggered starts, then each edge's round trip of 5 ms
    _run_devices(server, tiny_model, start_s=lambda i: 0.004 * i, gap_s=lambda i: 0.005)
    assert sum(server.batch_sizes) == 32
    assert server.batch_sizes.count(4) >= 5 and len(server.batch_sizes) <= 12, server.batch_sizes


def test_live_sessions_are_waited_for_up_to_their_usual_turnaround(tiny_model):
    """Fast batches, slow edges (a split near the end: long fronts, a short back): a
    batch waits for the live sessions up to their usual turnaround, so 4 devices whose
    next steps arrive 5-20 ms apart still batch as 4."""
    server = Server(tiny_model, ServerConfig(batch_window_ms=0.0, max_batch=16))
    _run_devices(server, tiny_model, start_s=lambda i: 0.0, gap_s=lambda i: 0.005 * (i + 1))  # different speeds
    assert sum(server.batch_sizes) == 32
    assert server.batch_sizes.count(4) >= 5 and len(server.batch_sizes) <= 12, server.batch_sizes


def test_slow_edges_beyond_the_old_liveness_still_batch_together(tiny_model):
    """A split near the end: every edge takes 100-130 ms per token, far beyond a fixed
    50 ms liveness horizon (the engine before this one batched them about N/2). Each
    session's due time follows its own turnaround, so after the first rounds (no
    turnaround known yet) they batch as 4."""
    server = Server(tiny_model, ServerConfig(batch_window_ms=2.0, max_batch=16))
    _run_devices(server, tiny_model, start_s=lambda i: 0.01 * i, gap_s=lambda i: 0.1 + 0.01 * i, steps=8)
    assert sum(server.batch_sizes) == 32
    assert server.batch_sizes.count(4) >= 4, server.batch_sizes


@pytest.mark.parametrize("n_fast", [1, 3])
def test_one_slow_device_does_not_slow_the_others(tiny_model, n_fast):
    """Edges with a 5 ms turnaround beside one with 400 ms: a batch waits only for the
    sessions due within its own steps' turnarounds, so the fast ones never wait for the
    slow one (waiting for it would hold each fast step up to 400 ms), also when they are
    as many as the slow ones (a median over the fleet would be the slow one's)."""
    server = Server(tiny_model, ServerConfig(batch_window_ms=2.0, max_batch=16))
    slow = n_fast
    out = _run_devices(server, tiny_model, start_s=lambda i: 0.0, gap_s=lambda i: 0.4 if i == slow else 0.005,
                       steps=6, n=n_fast + 1)
    fast_waits = sorted(r.queue_s for i in range(n_fast) for r in out[i][1:])
    assert fast_waits[len(fast_waits) // 2] < 0.05, fast_waits
    assert sum(server.batch_sizes) == 6 * (n_fast + 1)


def test_a_stalled_session_is_waited_for_at_most_one_turnaround_late(tiny_model):
    """A session whose edge stopped sending (a stall, a long local phase) and is overdue
    by more than one of its turnarounds is no longer waited for: the others' steps are
    computed at once, even with a long window (waited for, it would hold each step the
    whole 300 ms)."""
    server = Server(tiny_model, ServerConfig(batch_window_ms=300.0, max_batch=16))
    server.open_session("stalled", "r", SPLIT, 10)
    for s in server._sessions.values():
        s.gap_s, s.last_t = 0.2, s.last_t - 0.5  # due 0.3 s ago, overdue by more than 0.2 s
    res: list = []
    asyncio.run(_device(server, tiny_model, 1, 4, res))
    assert all(r.queue_s < 0.1 for r in res), [r.queue_s for r in res]


def test_the_wait_ends_when_the_last_awaited_session_drops_out(tiny_model):
    """A slow step (turnaround 0.4 s) sets its batch a 0.5 s deadline; the only other
    session, just opened and never heard from, is waited for 50 ms (``_live_s``), so the
    batch is computed then, not at the deadline."""
    server = Server(tiny_model, ServerConfig(batch_window_ms=2.0, max_batch=16))
    server.open_session("new", "r", SPLIT, 10)
    res: list = []

    async def slow_edge():
        sid = server.open_session("slow", "r", SPLIT, 10)
        server._lookup_locked(sid).gap_s = 0.4  # its edge usually takes 0.4 s a token
        x = tiny_model.run(0, SPLIT, torch.tensor([[3, 4, 5]]))
        res.append(await server.step(sid, encode(x, LOSSLESS), 0))

    asyncio.run(slow_edge())
    assert res[0].queue_s < 0.25, res[0].queue_s


@pytest.mark.parametrize("cfg, most", [(dict(batching=False), 1), (dict(max_batch=2), 2)])
def test_batches_never_exceed_the_configured_size(tiny_model, cfg, most):
    """With batching off every step runs alone; with ``max_batch`` 2, four devices in
    lockstep never share a batch of more than 2."""
    server = Server(tiny_model, ServerConfig(batch_window_ms=300.0, **cfg))
    res: list = []

    async def main():
        await asyncio.gather(*(_device(server, tiny_model, i, 3, res) for i in range(4)))

    asyncio.run(main())
    assert max(server.batch_sizes) == most and sum(server.batch_sizes) == 12, server.batch_sizes


def test_closing_the_awaited_session_wakes_the_batch(tiny_model):
    """A just-opened session is awaited (here for 20 windows: 6 s); closing it ends the
    wait of a queued step at once instead of at the 300 ms window."""
    server = Server(tiny_model, ServerConfig(batch_window_ms=300.0))
    other = server.open_session("other", "r", SPLIT, 10)
    res: list = []

    async def main():
        async def close_soon():
            await asyncio.sleep(0.03)
            server.close_session(other)

        await asyncio.gather(_device(server, tiny_model, 1, 1, res), close_soon())

    asyncio.run(main())
    assert 0.02 <= res[0].queue_s < 0.2, res[0].queue_s
