#!/usr/bin/env bash
# The GPU checks and benchmark in one go (meant to take under 8 minutes on one H200):
#   1. the GPU and its driver (nvidia-smi);
#   2. the CUDA tests: pytest -q -m gpu (reported; the benchmark runs even when they fail);
#   3. bench/gpu.py (training tokens/s, MFU and peak memory per preset with and without flash-attn
#      and torch.compile, the memory check, generation tokens/s): the table on stdout, the JSON in
#      ${OUT:-bench/.work}/gpu.json. Its --time-limit is what is left of GPU_BENCH_BUDGET (480 s)
#      after the tests, less a minute for the configuration running when it passes.
# Arguments go to bench/gpu.py (e.g. --presets small --no-compile; a --time-limit given here wins).
# Exit status: non-zero when the tests or the benchmark failed.
set -euo pipefail
cd "$(dirname "$0")/.."
py=python3
[ -x .venv/bin/python ] && py=.venv/bin/python
out="${OUT:-bench/.work}"
mkdir -p "$out"
budget="${GPU_BENCH_BUDGET:-480}"

if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "nvidia-smi failed"
else
    echo "nvidia-smi not found"
fi

echo "== pytest -q -m gpu"
tests=0
"$py" -m pytest -q -m gpu || tests=$?
echo "== pytest -m gpu: $([ "$tests" -eq 0 ] && echo passed || echo "FAILED (exit $tests)") after ${SECONDS} s"

left=$(( budget - SECONDS - 60 ))
[ "$left" -lt 60 ] && left=60
echo "== bench/gpu.py --time-limit $left $* (JSON: $out/gpu.json)"
bench=0
"$py" bench/gpu.py --save "$out/gpu.json" --time-limit "$left" "$@" || bench=$?
echo "== bench/gpu.py: $([ "$bench" -eq 0 ] && echo ok || echo "FAILED (exit $bench)"); pytest -m gpu: $([ "$tests" -eq 0 ] && echo passed || echo "FAILED (exit $tests)"); ${SECONDS} s in all"
[ "$tests" -eq 0 ] && [ "$bench" -eq 0 ]
