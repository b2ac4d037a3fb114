#!/usr/bin/env bash
# The Omniglot benchmark on one CUDA machine, one command, about 6 minutes by earlier section
# times (not run since the compiled baseline rows were added): throughput against the baselines
# on the same card, and time to 90% held-out accuracy, one run a side (`--tta-runs 3` for the
# spread). The zips come from OMNIGLOT_DIR, else are downloaded. Every
# worker gets num_gpus=1/WORKERS of the card (the workers share it) and vectorizes
# its share with vmap (auto on GPU). Arguments after WORKERS go to benchmarks.run and
# override these: `--workloads sinusoid omniglot --skip aggregation` adds the sinusoid (with
# a row at 50 steps a call at one worker) and the memory section (about 8 minutes in all),
# `--max-minutes 5` trains longer.
# The throughput rows run eagerly: compiling the conv net's meta-gradient for CUDA has
# not been timed yet and could take minutes of the five; `--set train.compile=true` tries it.
#   bash benchmarks/gpu.sh [WORKERS] [benchmarks.run options]
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
"$python" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else "gpu.sh: no CUDA device visible to torch")'
export RAY_USAGE_STATS_ENABLED=0
workers=${1:-2}
shift || true
exec "$python" -m benchmarks.run --device cuda --workers 1 "$workers" --steps 5 --target 0.9 --tta-width 64 \
    --max-minutes 0.75 --eval-every 25 --tta-runs 1 --workloads omniglot --skip memory aggregation --set train.compile=false "$@"
