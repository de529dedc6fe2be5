#!/usr/bin/env bash
# The checks only a GPU can make, from a fresh clone on a machine with an NVIDIA GPU and Python 3
# (about 5 minutes on a T4 or an H100):
#
#   bash scripts/gpu_check.sh WORK [DATA]
#
# DATA: CIFAR-10 as an image folder (train/<class>/*, test/<class>/*) or a .tar.xz / .tar.gz of
# one. Without it the speed check runs on synthetic images (the code path only, no accuracy floor).
#
# 1. What is missing is installed (pip install -r requirements.txt; a torch already there is kept).
# 2. tests/test_cuda.py (marked `cuda`): resume after a killed process, a bfloat16 run resumed on a
#    T4 (float16), copies to the host, the range test on the data's device and its kept sweep read
#    on the CPU, device= arguments, running out of memory and going on, export on a GPU model,
#    Lightning, DDP over NCCL (2+ GPUs). Each test asserts its own thresholds.
# 3. 4 epochs of notebook 04's recipe (benchmarks/train_speed.py, the GPU data path): seconds an
#    epoch and test accuracy, which must reach FLOOR percent with CIFAR-10.
# Logs and records are written under WORK: gpu.txt, install.log, cuda-tests.log, train-speed.log,
# train_speed.json. Exit status 0 only if every step passed.
set -uo pipefail
usage="usage: bash scripts/gpu_check.sh WORK [DATA]"
work=${1:?$usage}
data=${2:-}
FLOOR=60  # percent after 4 epochs: low on purpose, so that only a broken path fails it
cd "$(dirname "$0")/.."
mkdir -p "$work" && work=$(cd "$work" && pwd)
export PYTHONUNBUFFERED=1 NO_ALBUMENTATIONS_UPDATE=1

if ! command -v nvidia-smi >/dev/null 2>&1; then
  echo "no NVIDIA GPU here (nvidia-smi not found): nothing to check" >&2
  exit 1
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$work/gpu.txt"

# 1. Install what is missing (torch first only if absent: a machine's own CUDA build is kept).
python3 -c "import torch" 2>/dev/null || python3 -m pip install torch torchvision >> "$work/install.log" 2>&1
python3 -m pip install -r requirements.txt >> "$work/install.log" 2>&1 \
  || { echo "installing requirements.txt failed: see $work/install.log" >&2; exit 1; }
python3 -c "import torch, sys; print('torch', torch.__version__, 'cuda', torch.version.cuda); \
sys.exit(not torch.cuda.is_available())" >> "$work/gpu.txt" \
  || { echo "torch sees no CUDA device: see $work/gpu.txt" >&2; exit 1; }
cat "$work/gpu.txt"

# The data: a folder as it is, an archive extracted under WORK.
if [ -n "$data" ] && [ -f "$data" ]; then
  mkdir -p "$work/data" && tar xf "$data" -C "$work/data" || { echo "cannot extract $data" >&2; exit 1; }
  data=$work/data
fi
if [ -n "$data" ] && [ ! -d "$data/train" ]; then
  echo "$data has no train/ folder: give CIFAR-10 as an image folder or an archive of one" >&2
  exit 1
fi

status=0
# 2. The GPU tests.
python3 -m pytest tests/test_cuda.py -m cuda -p no:cacheprovider -rs -q 2>&1 | tee "$work/cuda-tests.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

# 3. Speed and a floor on accuracy: 4 epochs of the recipe through the GPU data path.
if [ -n "$data" ]; then
  python3 benchmarks/train_speed.py --paths gpu --epochs 4 --data-dir "$data" \
    --out "$work/train_speed.json" 2>&1 | tee "$work/train-speed.log"
else
  python3 benchmarks/train_speed.py --paths gpu --smoke --out "$work/train_speed.json" 2>&1 \
    | tee "$work/train-speed.log"
fi
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
if [ -n "$data" ] && [ -f "$work/train_speed.json" ]; then
  python3 - "$work/train_speed.json" "$FLOOR" <<'EOF' || status=1
import json, sys
run = json.load(open(sys.argv[1]))[0]
floor = float(sys.argv[2])
print(f"4 epochs: {run['test_acc']:.2f} % test accuracy (floor {floor:.0f} %), "
      f"{run['steady_seconds_per_epoch']:.1f} s an epoch on {run['device']}")
sys.exit(run["test_acc"] < floor)
EOF
fi
echo "gpu_check: $([ $status -eq 0 ] && echo passed || echo FAILED); logs in $work"
exit $status
