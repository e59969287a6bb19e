#!/usr/bin/env bash
# The GPU check, one command on a machine with an NVIDIA GPU and JAX's CUDA plugin installed:
#
#     bash benchmarks/gpu_check.sh [OUT_DIR]
#
# 1. tests/test_gpu.py (float32 kernels, empirical NTK and predictions on the GPU against float64 on
#    the CPU; skipped where there is no GPU), log in OUT_DIR/test_gpu.txt;
# 2. every benchmark area on the GPU (benchmarks/run.py --platform gpu --no-peer: neural-tangents'
#    legacy venv needs TensorFlow and a network, so the peer columns stay empty), one area per
#    invocation so that each area's JSON and the merged summary_gpu.{json,md} exist as soon as it ends;
#    OUT_DIR/gpu_results.tgz is refreshed after each area (a run cut short still returns what finished).
# GPU_CHECK_TESTS=0 skips step 1; GPU_CHECK_AREAS="kernels dmft" runs only those areas.
# owidth runs from this checkout (PYTHONPATH), not installed. OUT_DIR defaults to $OUT, else a temp dir.
# Copy the files into benchmarks/results/ by hand after reading them.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-$(mktemp -d)}}
work=$(mktemp -d)
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 OWIDTH_NO_PROGRESS=1
areas=${GPU_CHECK_AREAS:-"import compile kernels empirical ensembles dmft"}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import jax, jaxlib; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__, jax.devices())"
} 2>&1 | tee "$work/gpu_info.txt"

if [ "${GPU_CHECK_TESTS:-1}" != 0 ]; then
  start=$(date +%s)
  python3 -m pytest tests/test_gpu.py -m gpu -n 0 -s -q -p no:cacheprovider 2>&1 | tee "$work/test_gpu.txt"
  echo "[gpu_check] tests: $(( $(date +%s) - start )) s" | tee -a "$work/gpu_info.txt"
  cp "$work/test_gpu.txt" "$out/"
fi

for area in $areas; do
  t0=$(date +%s)
  python3 benchmarks/run.py --platform gpu --no-peer --out-dir "$work" --only "$area" > "$work/run_$area.txt" 2>&1 \
    || echo "[gpu_check] $area failed (see run_$area.txt)" | tee -a "$work/gpu_info.txt"
  echo "[gpu_check] $area: $(( $(date +%s) - t0 )) s" | tee -a "$work/gpu_info.txt"
  tar czf "$out/gpu_results.tgz" -C "$work" .
done
cat "$work/summary_gpu.md" 2>/dev/null
