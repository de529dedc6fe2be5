#!/usr/bin/env bash
# The checks only a GPU can make, in one go (about 8 minutes on one H100-class GPU):
#
#   bash scripts/gpu_check.sh WORK [DATA_DIR]
#
# 1. tests/test_cuda.py (marked `cuda`): resume after a killed process, the range test on the data's
#    device, float16 with a loss scaler as on a T4, bfloat16, Lightning's deterministic mode, DDP over
#    NCCL (with 2+ GPUs);
# 2. notebook 04 in full, seed 0: executed notebook, figures and run record under WORK;
# 3. the training-speed benchmark: its record under WORK/results.
# Each step's log is WORK/<step>.log; the GPU's name and driver are in WORK/gpu.txt. DATA_DIR holds
# CIFAR-10 (default: $EVA_DATA_DIR, else the data/ folder of this repository).
set -uo pipefail
work=${1:?usage: bash scripts/gpu_check.sh WORK [DATA_DIR]}
cd "$(dirname "$0")/.."
mkdir -p "$work"
export EVA_DATA_DIR=${2:-${EVA_DATA_DIR:-$PWD/data}} PYTHONUNBUFFERED=1
if ! python3 -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
  echo "no CUDA device here: nothing to check" >&2
  exit 1
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$work/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" >> "$work/gpu.txt"
status=0
python3 -m pytest tests/test_cuda.py -m cuda -p no:cacheprovider -rs -q 2>&1 | tee "$work/cuda-tests.log" || status=1
python3 scripts/full_runs.py --only 04 --seeds 0 --out "$work" 2>&1 | tee "$work/notebook-04.log" || status=1
python3 scripts/full_runs.py --only benchmark --out "$work" 2>&1 | tee "$work/benchmark.log" || status=1
exit $status
