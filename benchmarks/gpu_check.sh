#!/usr/bin/env bash
# GPU benchmarks: CCI (benchmarks/cci_speed.py) and IntegratedInteractions
# (benchmarks/interactions_speed.py), both with --device cuda, run from the repository root.
#
# Usage: bash benchmarks/gpu_check.sh [all|cci|families|interactions]
#   families: CCI against its forward limit on ViT-B-16-SigLIP2 and EVA02-B-16 (B=32)
#             -> benchmarks/results/cci_speed_cuda_families.md (about 2 min on an H200)
#
# Needs a CUDA GPU, torch, scikit-learn, scikit-image, open_clip_torch and captum. Wheels found
# in .whl/ (ignored by git) are installed to /tmp/site first: on this workplace's lent GPU
# machine, carry .whl with the wheels of open_clip_torch, captum, ftfy and wcwidth, e.g.
#   run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=600)
# Tables go to benchmarks/results/cci_speed_cuda.md and the GPU sections of
# benchmarks/results/interactions_speed.md (GPU named in them); logs and tables are also
# copied to $OUT when it is set. Expected time on an H200: about 2 min for cci.
set -uo pipefail
what=${1:-all}
PY=${PYTHON:-python3}
if compgen -G ".whl/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
logs=${OUT:-/tmp}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
status=0
if [ "$what" = all ] || [ "$what" = cci ]; then
  timeout 420 $PY benchmarks/cci_speed.py --device cuda 2>&1 | tee "$logs/cci_speed_cuda.log" \
    || status=1
fi
if [ "$what" = all ] || [ "$what" = families ]; then
  timeout 300 $PY benchmarks/cci_speed.py --device cuda --skip occlusion,ig,sklearn \
    --models ViT-B-16-SigLIP2:32 EVA02-B-16:32 --out benchmarks/results/cci_speed_cuda_families.md \
    2>&1 | tee "$logs/cci_speed_cuda_families.log" || status=1
fi
if [ "$what" = all ] || [ "$what" = interactions ]; then
  # by-layer tables (their GPU sections of results/interactions_speed.md)
  timeout 420 $PY benchmarks/interactions_speed.py --by-layer --device cuda --model ViT-B-16 \
    2>&1 | tee "$logs/interactions_speed_cuda.log" || status=1
  timeout 300 $PY benchmarks/interactions_speed.py --by-layer --device cuda --model ViT-L-14 \
    --layers=6,6 2>&1 | tee -a "$logs/interactions_speed_cuda.log" || status=1
fi
if [ -n "${OUT:-}" ]; then
  cp benchmarks/results/cci_speed_cuda.md benchmarks/results/cci_speed_cuda_families.md \
    benchmarks/results/interactions_speed.md "$OUT"/ \
    2>/dev/null || true
fi
exit $status
