#!/usr/bin/env bash
# The GPU check in one command: GPU facts, `python -m bench gpu` (P1, P2, P3 and the CUDA-graph /
# nvjpeg ablations; on CUDA: ViT-B-16, fp16, random init), then the gpu-marked tests.
#
#   bench/gpu.sh OUT_DIR [python -m bench gpu options]
#
# OUT_DIR gets <date>-<device>.json and the servers' logs. Environment:
#   PYTHON          interpreter (default python3), run from the repository root, project not installed
#   BENCH_BUDGET_S  the bench skips phases that would end later than this (default 300)
#   GPU_TESTS_S     time limit of the gpu-marked tests (default 150; 0 skips them)
set -o pipefail
cd "$(dirname "$0")/.." || exit 2
out=${1:?usage: bench/gpu.sh OUT_DIR [bench gpu options]}
shift
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
mkdir -p "$out"

if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,temperature.gpu,power.draw \
    --format=csv
fi
# Everything the bench and the server import, before any time is spent on them.
$py -c "
import torch, torchvision, open_clip, timm, fastapi, uvicorn, pydantic, pydantic_settings, httpx
import service.main, bench.gpu
print('python', __import__('platform').python_version(), 'torch', torch.__version__, 'torchvision',
      torchvision.__version__, 'open_clip', open_clip.__version__, 'timm', timm.__version__, 'fastapi',
      fastapi.__version__, 'uvicorn', uvicorn.__version__, 'cuda', torch.cuda.is_available())
" || exit 3

budget=${BENCH_BUDGET_S:-300}
# SIGINT, not SIGTERM: the bench's cleanup stops the servers it started in their own sessions.
timeout --signal=INT --kill-after=30 $((budget + 60)) \
  "$py" -m bench gpu --out-dir "$out" --server-log-dir "$out" --budget-s "$budget" "$@"
rc=$?

tests=${GPU_TESTS_S:-150}
if [ "$tests" -gt 0 ]; then
  timeout --signal=INT "$tests" "$py" -m pytest -q -m gpu -p no:cacheprovider \
    tests/promptclip/test_accel.py tests/bench tests/reliability/test_device_jpeg.py tests/service/test_gpu.py
fi
exit $rc
