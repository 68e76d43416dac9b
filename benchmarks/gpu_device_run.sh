#!/usr/bin/env bash
# The GPU check as one command on the project's GPU machine (no registry; torch 2.11 preinstalled), run from the
# repository root with the wheels of benchmarks/gpu_wheels.sh carried in .gpu_wheels/:
#
#   OUT=/path/for/results bash benchmarks/gpu_device_run.sh [gpu_check.py options]
#
# Installs the wheels and cmbrl itself with --no-deps into a private folder (the machine's Python is left as it is),
# then runs benchmarks/gpu_check.py with its report under $OUT/gpu_check (default runs/gpu_check).
set -euo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-python3}"
site="${CMBRL_SITE:-/tmp/cmbrl_site}"
wheels="${WHEELS:-.gpu_wheels}"
ls "$wheels"/*.whl > /dev/null || { echo "no wheels in $wheels: run benchmarks/gpu_wheels.sh on a machine with PyPI and carry the folder" >&2; exit 2; }
"$py" -m pip install --quiet --upgrade --no-deps --no-index --target "$site" "$wheels"/*.whl
PYTHONPATH="$site" "$py" -m pip install --quiet --no-deps --no-build-isolation --no-index --upgrade --target "$site" .
export PYTHONPATH="$site" PYTHONSAFEPATH=1  # the installed cmbrl, not the source folder cmbrl/ (which lacks the mapped subpackages)
"$py" -c "import torch, torchrl, tensordict, cmbrl; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'torchrl', torchrl.__version__, 'tensordict', tensordict.__version__)"
"$py" benchmarks/gpu_check.py --out "${OUT:-runs}/gpu_check" "$@"
