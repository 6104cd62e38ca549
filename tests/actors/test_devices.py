"""Devices and dtypes: ``server: {device, dtype}`` and per device group, resolved where the
side runs; ``cuda`` without CUDA is a validation error naming the field before any actor
starts; bfloat16 on CPU runs and splits exactly; the Triton encoder/decoder on the serving
path (CPU under TRITON_INTERPRET=1) give the reference's bytes and tokens."""
from __future__ import annotations

import os
import time

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # chosen at decoration: before import

from slicer.actors.models import load_model
from slicer.actors.models.devices import (
    DeviceUnavailableError,
    resolve_device,
    resolve_dtype,
)
from slicer.actors.models.generate import (
    EdgeSession,
    ServerSession,
    generate,
    reference_generate,
)
from slicer.actors.models.testing import TINY_LM, generate_batched
from slicer.actors.server import Server, ServerConfig
from slicer.codec import CodecConfig
from slicer.orchestrator.workload import WorkloadError, parse_workload

pytestmark = pytest.mark.usefixtures("one_thread")
NO_CUDA = not torch.cuda.is_available()
BASE = {"model": "examples/models/slicer-tiny", "devices": [{"class": "raspberry-pi-5", "count": 1}],
        "inputs": {"prompts": [[1, 5, 9, 2]]}, "max_new_tokens": 4, "requests": 1,
        "policy": {"name": "fixed", "split": 3, "offload_step": 1}, "codec": "lossless"}


@pytest.mark.skipif(not NO_CUDA, reason="checks the machine without CUDA")
def test_cuda_without_cuda_names_the_field():
    with pytest.raises(DeviceUnavailableError, match="server.device='cuda'"):
        resolve_device("cuda", "server.device")
    assert resolve_device("auto") == "cpu" and resolve_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="allowed auto, cpu, cuda"):
        resolve_device("tpu")
    assert resolve_dtype(None, "cpu") == torch.float32 and resolve_dtype(None, "cuda") is None
    assert resolve_dtype("bfloat16", "cpu") == torch.bfloat16


@pytest.mark.skipif(not NO_CUDA, reason="checks the machine without CUDA")
@pytest.mark.parametrize("where", [{"server": {"device": "cuda"}},
                                   {"devices": [{"class": "raspberry-pi-5", "device": "cuda"}]}])
def test_run_with_cuda_fails_validation_within_seconds(where, tmp_path):
    """``slicer run`` of a workload asking for CUDA on a machine without it fails before
    a cluster or an actor starts, naming the field."""
    from slicer.orchestrator.runner import run_inprocess, run_workload

    wl = parse_workload({**BASE, **where}, base_dir=os.getcwd())
    field = "server.device" if "server" in where else "devices[0].device"
    t0 = time.perf_counter()
    import re

    with pytest.raises(WorkloadError, match=re.escape(f"{field}='cuda'")):
        run_workload(wl, out=tmp_path, progress=None, write=False)
    assert time.perf_counter() - t0 < 30  # config + prompts only; a cluster start alone takes 10+ s
    import ray

    assert not ray.is_initialized()
    with pytest.raises(WorkloadError, match="'cuda'"):
        run_inprocess(wl)


def test_workload_device_fields_are_checked():
    for bad, field in (({"server": {"device": "gpu"}}, "server.device"), ({"server": {"dtype": "int8"}}, "server.dtype"),
                       ({"devices": [{"class": "raspberry-pi-5", "dtype": "fp8"}]}, "devices[0].dtype")):
        with pytest.raises(WorkloadError, match=field.replace("[", r"\[").replace("]", r"\]")):
            parse_workload({**BASE, **bad})


def test_cpu_bfloat16_server_runs_in_process():
    """``server: {device: cpu, dtype: bfloat16}`` runs end to end; the server computes in
    bfloat16 and every request succeeds."""
    from slicer.orchestrator.runner import run_inprocess

    wl = parse_workload({**BASE, "server": {"device": "cpu", "dtype": "bfloat16"},
                         "devices": [{"class": "raspberry-pi-5", "count": 2, "dtype": "bfloat16"}]},
                        base_dir=os.getcwd())
    out = run_inprocess(wl)
    assert all(r.ok for r in out.records), [r.error for r in out.records]
    assert all(r.front_precision == "bfloat16" for r in out.records)
    # both halves in bfloat16 with a lossless codec: the unsplit bfloat16 model's tokens
    m = load_model("examples/models/slicer-tiny", dtype=torch.bfloat16)
    ref, _ = reference_generate(m, torch.tensor([[1, 5, 9, 2]]), 4)
    assert [r.tokens for r in out.records] == [ref, ref]


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_bfloat16_batched_split_is_exact(family):
    """Both halves in bfloat16, sessions of different lengths batched on the server: the
    unsplit bfloat16 model's greedy tokens."""
    m = load_model(TINY_LM[family], dtype=torch.bfloat16, seed=5)
    prompts = [torch.tensor([[3, 9, 4, 7, 1, 8][:n]]) for n in (2, 6, 4)]
    refs = [reference_generate(m, p, 5)[0] for p in prompts]
    edges = [EdgeSession(m, 2, CodecConfig(method="raw")) for _ in prompts]
    servers = [ServerSession(m, 2, capacity=16) for _ in prompts]
    assert generate_batched(edges, servers, prompts, 5) == refs
    assert servers[0].cache._k[servers[0].cache.layer_ids[0]].dtype == torch.bfloat16


def test_triton_codec_on_the_serving_path(monkeypatch):
    """With the Triton backend (CUDA, or CPU under TRITON_INTERPRET=1) the edge's payloads
    are byte-identical to the torch reference's and the server, decoding with the Triton
    decoder, returns the same tokens."""
    pytest.importorskip("triton")
    m = load_model(TINY_LM["llama"], seed=6)
    cfg = CodecConfig.parse("slicer:sparsity=0.5")
    prompt = torch.tensor([[3, 9, 4, 7, 5]])
    ref = generate(m, prompt, 3, split=2, codec_cfg=cfg.replace(backend="torch"))
    monkeypatch.setenv("SLICER_CODEC_BACKEND", "triton")
    server = Server(m, ServerConfig())
    sid = server.open_session("d", "r", 2, 16)
    edge = EdgeSession(m, 2, cfg)
    st, pos, toks, sizes = edge.begin(prompt), 0, [], []
    for i in range(3):
        sizes.append(len(st.payload))
        toks.append(server.step_now(sid, st.payload, pos).token)
        pos += st.tokens_in_payload
        if i < 2:
            st = edge.next(toks[-1])
    assert toks == ref.tokens
    assert sizes == ref.payload_bytes
