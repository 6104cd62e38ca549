#!/usr/bin/env bash
# GPU check of the serving path, as one prepared script (about 5-10 minutes on one GPU):
#   1. codec kernel parity on CUDA: the Triton encoder/decoder byte-identical to the
#      torch reference (tests/codec/test_kernel_*.py run on CUDA when a GPU is present);
#   2. a split run with the server on CUDA in bfloat16: exact greedy tokens against the
#      unsplit model in the same dtype, per session and batched with mixed lengths, the
#      edge encoding on CUDA (Triton encoder) and the server decoding onto the GPU;
#   3. `slicer run --in-process` of a workload with server: {device: cuda, dtype: bfloat16};
#   4. `slicer bench serve` (slicer-tiny, 1 and 8 devices) and `slicer bench codec --backend triton`.
# Results go to $OUT (default ./gpu_check_out): a log per step and the benchmarks' JSON.
# Usage: bash examples/gpu_check.sh   (from the repository root, after pip install -e ".[test]")
set -u
OUT="${OUT:-./gpu_check_out}"
mkdir -p "$OUT"
unset TRITON_INTERPRET
status=0
step() {  # step NAME TIMEOUT_S COMMAND...
  local name="$1" t="$2"; shift 2
  echo "== $name" | tee -a "$OUT/summary.txt"
  local t0=$(date +%s)
  if timeout "$t" "$@" > "$OUT/$name.log" 2>&1; then
    echo "   ok ($(( $(date +%s) - t0 )) s)" | tee -a "$OUT/summary.txt"
  else
    echo "   FAILED rc=$? ($(( $(date +%s) - t0 )) s): tail of $OUT/$name.log" | tee -a "$OUT/summary.txt"
    tail -n 15 "$OUT/$name.log" | tee -a "$OUT/summary.txt"
    status=1
  fi
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1 || true
python - <<'EOF' | tee -a "$OUT/summary.txt"
import torch
print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")
if not torch.cuda.is_available():
    raise SystemExit("no CUDA device: this script checks the GPU path")
EOF
[ "${PIPESTATUS[0]}" -eq 0 ] || exit 2

step kernel_parity 300 python -m pytest -q -x tests/codec/test_kernel_slicer.py tests/codec/test_kernel_decode.py \
  tests/codec/test_kernel_atkf.py tests/codec/test_kernel_bitpack.py

step split_cuda_bf16 300 python - <<'EOF'
import torch
from slicer.actors.models import load_model
from slicer.actors.models.generate import EdgeSession, ServerSession, generate, reference_generate
from slicer.actors.models.testing import generate_batched
from slicer.codec import CodecConfig, encode

dev, dt = "cuda", torch.bfloat16
src = "examples/models/slicer-tiny"
full = load_model(src, device=dev, dtype=dt)
n = full.num_units
front = load_model(src, device=dev, dtype=dt, units=(0, 3))       # segment-only halves
back = load_model(src, device=dev, dtype=dt, units=(3, n))
assert front.device.type == "cuda" and back.dtype == dt
prompts = [torch.tensor([p]) for p in ([1, 5, 9, 13, 2], [3, 4], [7, 8, 9, 10, 11, 12, 13, 14, 15])]
lossless = CodecConfig(method="raw")
for p in prompts:
    ref, _ = reference_generate(full, p, 12)
    for split in (1, 3, n - 1):
        got = generate(full, p, 12, split=split, codec_cfg=lossless)
        assert got.tokens == ref, (split, got.tokens, ref)
# batched ServerSession steps (the server's compute path) on CUDA, sessions of different
# lengths, halves holding only their units
refs = [reference_generate(full, p, 10)[0] for p in prompts]
edges = [EdgeSession(front, 3, lossless) for _ in prompts]
sess = [ServerSession(back, 3, capacity=64) for _ in prompts]
outs = generate_batched(edges, sess, prompts, 10)
assert outs == refs, (outs, refs)
# the Triton encoder on a CUDA feature: same bytes as the torch reference
x = front.run(0, 3, prompts[2].to(dev)).float()
cfg = CodecConfig.parse("slicer:sparsity=0.5")
a, b = encode(x, cfg), encode(x.cpu(), cfg.replace(backend="torch"))
print("triton encoder bytes == reference:", a == b, len(a))
assert a == b
print("split on CUDA in bfloat16: exact unsplit tokens, per session and batched")
EOF

cat > "$OUT/cuda_bf16.yaml" <<'EOF'
name: gpu-check
model: examples/models/slicer-tiny
inputs: {prompts: [[1, 5, 9, 13, 2], [3, 4, 5]]}
devices: [{class: raspberry-pi-5, count: 2}]
policy: {name: fixed, split: 3, offload_step: 1}
codec: lossless
requests: 2
max_new_tokens: 16
server: {device: cuda, dtype: bfloat16}
EOF
step run_inprocess_cuda 300 slicer run "$OUT/cuda_bf16.yaml" --in-process
step bench_serve 600 slicer bench serve --models tiny --devices 1,8 --tokens 32 --long-tokens 0 --json "$OUT/serve.json"
step bench_codec_triton 300 slicer bench codec --backend triton --quick --json "$OUT/codec_triton.json"
echo "done: status $status (see $OUT/summary.txt)"
exit $status
