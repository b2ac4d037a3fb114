#!/usr/bin/env bash
# The benchmark suite on one CUDA machine, one command, about 5 minutes: every
# worker gets num_gpus=1/WORKERS of the card (the workers share it), the baseline
# runs on the same card, and workers vectorize their share with vmap (auto on GPU).
#   bash benchmarks/gpu.sh [WORKERS]
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
"$python" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else "gpu.sh: no CUDA device visible to torch")'
export RAY_USAGE_STATS_ENABLED=0
exec timeout 290 "$python" -m benchmarks.run --device cuda --workers 1 "${1:-2}" --steps 5 --target 0.9 --tta-width 64 --max-minutes 1.5 --skip aggregation
