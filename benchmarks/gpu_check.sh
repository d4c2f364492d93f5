#!/usr/bin/env bash
# The GPU check: on a machine with one CUDA device, run the cuda-marked tests, compute a SmolLM2
# blueprint in bf16 (and fp32 for reference), run the fine-tuning engine's arms and the ghost-norm
# benchmark with CUDA timings and torch.cuda peak memory, and write ONE results file
# (benchmarks/results/gpu_check.json), all within 8 minutes. Details: benchmarks/gpu_check.py.
#
#   benchmarks/gpu_check.sh              # on the GPU machine
#   benchmarks/gpu_check.sh --dry-run    # CPU rehearsal: same steps, tiny sizes (tests run this)
#
# Exit status: 0 every step passed, 1 a step failed or ran out of its time, 2 no CUDA device.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python3
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# The 8-minute budget is the GPU machine's; the CPU rehearsal may take longer on a busy machine.
LIMIT=480
for arg in "$@"; do [ "$arg" = "--dry-run" ] && LIMIT=1800; done
exec timeout "$LIMIT" "$PYTHON" benchmarks/gpu_check.py "$@"
