#!/usr/bin/env bash
# The benchmark suite on one CUDA machine, one command, under 5 minutes: every
# worker gets num_gpus=1/WORKERS of the card (the workers share it), the baseline
# runs on the same card, and workers vectorize their share with vmap (auto on GPU).
# Arguments after WORKERS go to benchmarks.run and override these (e.g. --max-minutes 5).
#   bash benchmarks/gpu.sh [WORKERS] [benchmarks.run options]
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
"$python" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else "gpu.sh: no CUDA device visible to torch")'
export RAY_USAGE_STATS_ENABLED=0
workers=${1:-2}
shift || true
exec "$python" -m benchmarks.run --device cuda --workers 1 "$workers" --steps 5 --target 0.9 --tta-width 64 \
    --max-minutes 1 --eval-every 25 --skip aggregation "$@"
