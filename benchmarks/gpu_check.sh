#!/usr/bin/env bash
# The GPU check, one prepared run on a machine with one CUDA GPU (about 8-10 minutes on an H100/H200):
#   1. the tests marked `cuda` (pytest -m cuda)
#   2. the parser alone: faces/s at batch 16..1024 per precision, and each precision's labels vs fp32
#   3. the face-first job (`run_job`, local Ray, one GPU actor) on PHOTOS face-pool photos, against the
#      model alone on the same photos, with nvidia-smi's GPU busy share and where the time goes
# Everything printed is also in $OUT/gpu_check.log; nvidia-smi samples for the whole run in $OUT/gpu_samples.csv.
#
#   benchmarks/gpu_check.sh              # on the GPU machine, from the repository root
#   benchmarks/gpu_check.sh --dry-run    # on a CPU: the same steps, tiny sizes, device cpu (checks the script)
# Environment: PYTHON (default .venv/bin/python, else python3), PHOTOS (default 2000), OUT (default out/gpu-check),
# BATCH (the job's --batch-size, default 64), SHARED (the shared/ folder, default ../shared, else ./shared).
# Needs the project's dependencies (scripts/setup-env with a CUDA torch as TORCH_SPEC) and the MTCNN weights.
set -euo pipefail
cd "$(dirname "$0")/.."
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
OUT=${OUT:-out/gpu-check}
SHARED=${SHARED:-../shared}
[ -d "$SHARED/data" ] || SHARED=./shared
PHOTOS=${PHOTOS:-2000}
BATCH=${BATCH:-64}
DEVICE=cuda
SIZES=16,64,256,1024
FACES=1024
if [ "$DRY" = 1 ]; then PHOTOS=16 BATCH=8 DEVICE=cpu SIZES=4 FACES=8; fi
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 BATCH_PARSE_SHARED="$SHARED"
exec > >(tee "$OUT/gpu_check.log") 2>&1

# 0. What is missing, in one line, before anything runs.
"$PY" - "$DEVICE" <<'EOF'
import importlib.util, sys
need = ["torch", "ray", "pyarrow", "boto3", "PIL", "safetensors", "click", "yaml", "pytest", "facenet_pytorch"]
missing = [m for m in need if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"error: missing Python packages: {', '.join(missing)} (scripts/setup-env with TORCH_SPEC set to a CUDA torch)")
import torch
if sys.argv[1] == "cuda" and not torch.cuda.is_available():
    sys.exit(f"error: torch {torch.__version__} sees no CUDA GPU")
print(f"torch {torch.__version__}, device {torch.cuda.get_device_name(0) if sys.argv[1] == 'cuda' else 'cpu (dry run)'}")
EOF
[ -d "$SHARED/data/facepool/caltech_webfaces/images" ] || { echo "error: no face pool under $SHARED/data (set SHARED)"; exit 1; }

SAMPLER=""
if command -v nvidia-smi >/dev/null; then
  nvidia-smi -L
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader,nounits -lms 500 >"$OUT/gpu_samples.csv" &
  SAMPLER=$!
fi
trap '[ -n "$SAMPLER" ] && kill "$SAMPLER" 2>/dev/null || true' EXIT

echo "== 1. tests marked cuda (skipped without a GPU)"
# Only the files that hold cuda tests: collecting the whole suite imports every test extra.
"$PY" -m pytest -q -p no:cacheprovider -m cuda tests/test_model_api.py tests/test_detector.py || echo "CUDA TESTS FAILED"

echo "== 2. the parser alone: faces/s per batch size and precision, labels vs fp32"
"$PY" benchmarks/gpu_model.py --device "$DEVICE" --batch-sizes "$SIZES" --faces "$FACES" --face-dir "$SHARED/data/utkface"

echo "== 3. face-first job on $PHOTOS face-pool photos (in the wild), GPU actor, vs the model alone"
"$PY" benchmarks/pipeline_throughput.py --local --faces all --no-naive --images "$PHOTOS" --batch-size "$BATCH" \
  --source-dir "$SHARED/data/facepool/caltech_webfaces/images"

if [ -n "$SAMPLER" ]; then
  kill "$SAMPLER" 2>/dev/null || true
  "$PY" - "$OUT/gpu_samples.csv" <<'EOF'
import sys
busy = [float(line.split(",")[1]) for line in open(sys.argv[1]) if line.count(",") >= 2]
if busy:
    print(f"GPU busy over the whole check: mean {sum(busy) / len(busy):.0f}%, {sum(b > 0 for b in busy) / len(busy):.0%} of "
          f"{len(busy)} samples above 0% (the job's own steady-state share is printed by step 3)")
EOF
fi
echo "gpu check done; log in $OUT/gpu_check.log"
