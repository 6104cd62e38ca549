"""Measuring a model and the codec on this machine (what `slicer profile` caches). The one
place that times things for planning: the planner (``slicer.policies``) only reads the
profiles this module measures, it never measures or writes files itself.

How units are timed: the edge always runs a prefix ``[0, ℓ)`` of the model in one call,
so the profile times every prefix (median of ``reps`` runs, one decode token after a
cache of ``c`` tokens, for a few contexts ``c``) and stores unit ``j``'s time as
``T(j+1) - T(j)`` (made non-decreasing first). Summing units ``[0, ℓ)`` then gives back
the measured prefix time exactly, per-call overheads included (timing units one by one
would count the per-call overhead ``ℓ`` times: on stories260k that overhead is most of
a unit's time).
"""
from __future__ import annotations

import os
import platform
import statistics
import time

DEFAULT_CODECS = ("lossless", "slicer:sparsity=0.5", "slicer", "slicer:sparsity=0.9", "int8")


CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}


def _median_s(fn, reps: int, clock=time.perf_counter, disturb=None) -> float:
    """Median seconds of ``fn`` after one warm-up. ``disturb`` (untimed) runs before each
    timed call, so ``fn`` is timed as it runs in a split step, right after other work
    (caches and branch predictors as cold as in the pipeline): timed back to back, SLICER
    encode of a stories260k feature took 0.77 ms against 1.24 ms inside a real split
    decode loop."""
    return _round_robin_medians([fn], reps, clock, disturb)[0]


def _prefix_cache(model, full, ell: int):
    """A cache for the segment [0, ell) holding the entries of the full-model cache."""
    return _view_cache(full, 0, ell, model.attn_layers(0, ell))


def _view_cache(full, a: int, b: int, ids):
    """A cache of [a, b) on the full cache's own buffers at its length: a timed step
    writes its token at ``full.length`` in place (a slot the full cache does not count),
    so every timed call starts from the same history and nothing is copied."""
    from slicer.actors.models.cache import SegmentCache

    c = SegmentCache(a, b, tuple(ids), full.capacity, full.length)
    c._k = {i: full._k[i] for i in ids if i in full._k}
    c._v = {i: full._v[i] for i in ids if i in full._v}
    return c


def _round_robin_medians(fns, reps: int, clock=time.perf_counter, disturb=None) -> list[float]:
    """Median seconds of each function, timed in interleaved rounds (one run of each per
    round) so a burst of load from other processes hits every point alike; ``disturb``
    (untimed) runs before each timed call, as other work does in the pipeline."""
    for fn in fns:
        fn()  # warm-up
    ts = [[] for _ in fns]
    for _ in range(reps):
        for i, fn in enumerate(fns):
            if disturb is not None:
                disturb()
            t0 = clock()
            fn()
            ts[i].append(clock() - t0)
    return [statistics.median(t) for t in ts]


def time_prefixes(model, context: int, tokens: int, reps: int, seed: int = 0, clock=time.perf_counter,
                  disturb=None) -> list[float]:
    """Median seconds of ``run(0, ell)`` for ell = 1..n on ``tokens`` new tokens after a
    cache of ``context`` tokens (vision: one image, no cache)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    n = model.num_units
    if model.kind == "vision":
        size = int(getattr(model.config, "image_size", 224) or 224)
        x = torch.randn(1, 3, size, size, generator=g, dtype=model.dtype)
        return _round_robin_medians([lambda ell=ell: model.run(0, ell, x) for ell in range(1, n + 1)], reps, clock, disturb)
    vocab = int(model.config.vocab_size)
    full = model.new_cache(0, n, capacity=context + tokens)
    if context:
        model.run(0, n, torch.randint(0, vocab, (1, context), generator=g), full)
    new = torch.randint(0, vocab, (1, tokens), generator=g)
    fns = [lambda ell=ell: model.run(0, ell, new, _prefix_cache(model, full, ell)) for ell in range(1, n + 1)]
    return _round_robin_medians(fns, reps, clock, disturb)


def unit_times(prefix_s: list[float]) -> list[float]:
    """Per-unit seconds from prefix times: differences of the closest non-decreasing
    sequence (pool-adjacent-violators: noise can make a longer prefix look faster, and a
    unit never takes negative time; unlike a running maximum, one slow outlier does not
    lift every longer prefix)."""
    blocks: list[list[float]] = []  # [sum, count]
    for t in prefix_s:
        blocks.append([t, 1])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            s, c = blocks.pop()
            blocks[-1][0] += s
            blocks[-1][1] += c
    mono = [b[0] / b[1] for b in blocks for _ in range(int(b[1]))]
    return [mono[0]] + [mono[i] - mono[i - 1] for i in range(1, len(mono))]


def time_codecs(features, specs, reps: int, clock=time.perf_counter, disturb=None) -> tuple[list, list]:
    """(encode rows, decode rows): ``(spec, elements, median s)`` for each spec and feature."""
    from slicer import codec
    from slicer.codec import CodecConfig

    enc, dec = [], []
    for spec in specs:
        cfg = CodecConfig.parse(spec)
        canon = cfg.spec()
        for x in features:
            payload = codec.encode(x, cfg)
            enc.append((canon, int(x.numel()), _median_s(lambda x=x, cfg=cfg: codec.encode(x, cfg), reps, clock, disturb)))
            dec.append((canon, int(x.numel()), _median_s(lambda p=payload: codec.decode(p), reps, clock, disturb)))
    return enc, dec


#: Points the codec stages are timed at: (elements, sparsity, blocks, λ, fixed bits).
STAGE_POINTS = tuple(
    (n, s, m, lam, fixed)
    for n in (4096, 65536, 262144)
    for s, m, lam, fixed in ((0.0, (1, 1), 0.0, False), (0.5, (3, 3), 0.0, False), (0.9, (8, 8), 0.2, False),
                             (0.75, (2, 1), 0.0, True), (0.25, (4, 4), 0.2, True))
)


def time_codec_stages(points=STAGE_POINTS, reps: int = 5, clock=time.perf_counter, seed: int = 0) -> list[dict]:
    """Time each stage of the reference SLICER encoder (ATKF, MS, ABQ, index + packing)
    and the decoder on a heavy-tailed float32 feature (Student-t, 3 degrees of freedom:
    LLM activations have outliers) at each point; rows for ``fit_stage_coefficients``."""
    import numpy as np

    from slicer.codec import CodecConfig
    from slicer.policies.codectime import counts

    rng = np.random.default_rng(seed)
    rows = []
    for n, s, m, lam, fixed in points:
        x = rng.standard_t(3, size=n).astype(np.float32)
        cfg = CodecConfig(method="slicer", sparsity=s, blocks=m, asymmetry=lam, bits=8, delta=None if fixed else 0.01)
        rows.append({**counts((n,), cfg), **_stage_times(x, cfg, reps, clock), "spec": cfg.spec()})
    return rows


def _stage_times(x, cfg, reps: int, clock) -> dict[str, float]:
    """Median seconds of each encoder stage and of the decoder for ``x`` (float32, flat)."""
    import numpy as np
    import torch

    from slicer import codec
    from slicer.codec.reference import index as _index
    from slicer.codec.reference import quant
    from slicer.codec.reference.atkf import atkf_positions, keep_count
    from slicer.codec.reference.ms import all_block_sizes, split_blocks
    from slicer.codec.slicer import _Slicer

    n, m, fixed = x.shape[0], tuple(cfg.blocks), cfg.delta is None
    mtot, k = m[0] + m[1], keep_count(x.shape[0], cfg.sparsity)
    st = {"atkf": _median_s(lambda: atkf_positions(x, k, cfg.asymmetry, 0), reps, clock)}
    pos = atkf_positions(x, k, cfg.asymmetry, 0)

    def ms():
        labels, mags, n_pos = split_blocks(x[pos], pos, m, 0)
        sizes = all_block_sizes(k, n_pos, m)
        order = _index.block_order(labels)
        return labels, mags[order], sizes

    st["ms"] = _median_s(ms, reps, clock)
    labels, m_sorted, sizes = ms()

    def abq():
        lo, hi = quant.block_ranges(m_sorted, sizes)
        q0 = np.full(mtot, 8, dtype=np.int64)
        codes = _Slicer._codes(m_sorted, sizes, lo, hi, q0)
        widths = q0 if fixed else quant.choose_widths(m_sorted, sizes, lo, hi, 8, float(cfg.delta), codes)
        if np.any(widths != q0):
            codes = _Slicer._codes(m_sorted, sizes, lo, hi, widths)
        return codes, widths

    st["abq"] = _median_s(abq, reps, clock)
    codes, widths = abq()

    def pack():
        coding = _index.choose("auto", (n,), pos, mtot)
        _index.encode(coding, pos, labels, (n,), mtot)
        quant.pack_blocks(codes, sizes, widths)

    st["pack"] = _median_s(pack, reps, clock)
    payload = codec.encode(torch.from_numpy(x), cfg)
    st["decode"] = _median_s(lambda: codec.decode(payload), reps, clock)
    return st


def time_call_overhead(model, context: int, reps: int, clock=time.perf_counter, seed: int = 0, disturb=None) -> float:
    """Seconds a separate ``run(a, b)`` call costs beyond its units' share of a prefix
    (masks, position embeddings, Python dispatch): ``run(1, n-1)`` timed alone minus the
    prefix difference ``T(n-1) - T(1)``. A server segment [ℓ, n) is such a call."""
    import torch

    if model.kind == "vision" or model.num_units < 3:
        return 0.0
    g = torch.Generator().manual_seed(seed)
    n = model.num_units
    vocab = int(model.config.vocab_size)
    full = model.new_cache(0, n, capacity=context + 1)
    model.run(0, n, torch.randint(0, vocab, (1, context), generator=g), full)
    tok = torch.randint(0, vocab, (1, 1), generator=g)
    h = model.run(0, 1, tok)  # (1, 1, H): the embedding of one token

    def mid_cache():
        return _view_cache(full, 1, n - 1, model.attn_layers(1, n - 1))

    t1, t_mid, t_last = _round_robin_medians([
        lambda: model.run(0, 1, tok, _prefix_cache(model, full, 1)),
        lambda: model.run(1, n - 1, h, mid_cache()),
        lambda: model.run(0, n - 1, tok, _prefix_cache(model, full, n - 1)),
    ], reps, clock, disturb)
    return max(0.0, t_mid - (t_last - t1))


def machine_peaks() -> tuple[float, float, float]:
    """(memory bytes, copy bandwidth bytes/s, float32 matmul FLOP/s) of this machine,
    measured quickly (informational; measured timings take precedence)."""
    import torch

    try:
        mem = float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        mem = 8e9
    a = torch.empty(8 * 2**20)  # 32 MiB of float32
    b = torch.empty_like(a)
    t = _median_s(lambda: b.copy_(a), 5)
    bw = 2 * a.numel() * 4 / t  # read + write
    m = torch.randn(256, 256)
    t = _median_s(lambda: m @ m, 5)
    flops = 2 * 256**3 / t
    return mem, bw, flops


def measure_profile(model, *, device_name: str | None = None, contexts=(16, 64, 256), prefill_tokens: int = 32,
                    reps: int = 15, codec_specs=DEFAULT_CODECS, model_name: str | None = None,
                    clock: str = "wall", stage_points=STAGE_POINTS, progress=None):
    """Measure ``model`` (a ``SplitModel``) on this machine: returns (ModelProfile,
    DeviceProfile) with ``kind="measured"``. ``stage_points``: where the codec's stages
    are timed for ζ̂'s per-stage fit (``time_codec_stages``; empty: not fitted).
    ``progress``: called with a short line as each stage starts (``slicer profile`` prints it).

    ``clock="wall"`` (default) times elapsed time, what a dedicated device sees.
    ``clock="cpu"`` times the CPU time of the timing thread (run with one torch thread):
    on a shared machine, wall-clock medians mostly measure the scheduler (here, 2 cores
    at load average 11-17, the median of a 1 ms step was 4-10x its uncontended time)."""
    if clock not in CLOCKS:
        raise ValueError(f"clock={clock!r} is invalid: allowed {', '.join(CLOCKS)}")
    tick = CLOCKS[clock]
    import dataclasses

    import torch

    from slicer.policies.devices import DeviceProfile, MeasuredTimings

    prof = model.profile
    if model_name:
        prof = dataclasses.replace(prof, name=model_name)
    prof = dataclasses.replace(prof, source="measured")
    if model.kind == "vision":
        contexts = (0,)
        prefill_tokens = 0
    contexts = tuple(sorted({int(c) for c in contexts}))
    from slicer import codec as _codec

    # In a split step the edge's segment runs after the codec and the server's work.
    # Time it that way: one untimed SLICER decode of a feature before each timed call
    # (the round robin itself interleaves other model segments). Back to back, the warm
    # loop under-predicted a real split decode loop of stories260k by 10-15%; with a full
    # encode + decode round trip before each call it over-predicted by 10-20%.
    probe = torch.randn(1, prof.hidden_size or 64, generator=torch.Generator().manual_seed(2))
    probe_payload = _codec.encode(probe, _codec.CodecConfig())
    codec_disturb = lambda: _codec.decode(probe_payload)
    say = progress or (lambda _line: None)
    with torch.no_grad():
        rows = []
        for i, c in enumerate(contexts):
            say(f"[{i + 1}/{len(contexts)}] {model.num_units} units after a {c}-token cache")
            rows.append(tuple(unit_times(time_prefixes(model, c, 1, reps, clock=tick, disturb=codec_disturb))))
        if prefill_tokens > 1:
            say(f"prefill of {prefill_tokens} tokens")
        prefill = tuple(unit_times(time_prefixes(model, 0, prefill_tokens, reps, clock=tick, disturb=codec_disturb))) \
            if prefill_tokens > 1 else ()
        if model.kind == "causal_lm":
            h = prof.hidden_size
            g = torch.Generator().manual_seed(1)
            feats = [torch.randn(t, h, generator=g) for t in (1, 8, 64)]
        else:
            mid = prof.layers[len(prof.layers) // 2]
            feats = [torch.randn(1, *mid.out_shape)]
        disturb = None
        if model.kind == "causal_lm":
            tok = torch.zeros(1, 1, dtype=torch.long)
            disturb = lambda: model.run(0, model.num_units, tok)
        say(f"{len(codec_specs)} codec setting(s) on {len(feats)} feature(s)")
        enc, dec = time_codecs(feats, codec_specs, reps, clock=tick, disturb=disturb)
        overhead = time_call_overhead(model, contexts[len(contexts) // 2], reps, clock=tick, disturb=codec_disturb) \
            if model.kind == "causal_lm" else 0.0
    stages, fit_note = None, ""
    if stage_points:
        from slicer.codec import CodecConfig
        from slicer.policies.codectime import fit_stage_coefficients

        say(f"codec stages at {len(stage_points)} points (for the stage-time fit)")
        timed = time_codec_stages(stage_points, max(3, reps // 3), clock=tick)
        fit = fit_stage_coefficients(timed)
        stages = fit.to_dict()
        ratios = [fit.encode_s((int(r["N"]),), CodecConfig.parse(r["spec"])) / (r["atkf"] + r["ms"] + r["abq"] + r["pack"])
                  for r in timed]
        fit_note = (f"; codec stage fit predicts {min(ratios):.2f}-{max(ratios):.2f}x of the timed encodes "
                    f"({len(timed)} points)")
    mem, bw, flops = machine_peaks()
    name = device_name or f"this-machine-{platform.node() or 'host'}"
    dev = DeviceProfile(
        name=name, memory_bytes=mem, memory_bandwidth_bps=bw, peak_flops={"float32": flops},
        compute_efficiency=1.0, bandwidth_efficiency=1.0, kind="measured",
        description=f"measured by slicer profile on {platform.node()} ({platform.processor() or platform.machine()}), "
                    f"torch {torch.__version__}, {torch.get_num_threads()} threads, {clock} clock{fit_note}",
        measured=MeasuredTimings(contexts=contexts, unit_s=tuple(rows), prefill_tokens=prefill_tokens if prefill else 0,
                                 prefill_unit_s=prefill, codec=tuple(enc), codec_decode=tuple(dec),
                                 call_overhead_s=overhead, codec_stages=stages),
        measured_model=prof.name, measured_dtype=prof.dtype,
    )
    return prof, dev
