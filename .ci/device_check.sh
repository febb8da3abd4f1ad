#!/bin/bash
# The checks that need a CUDA GPU, on a machine that has one, with that machine's own torch: every CUDA test
# (they skip elsewhere), then the whole suite. Logs go to $OUT when it is set, else to the current folder.
#   .ci/device_check.sh [WHEEL_DIR]   # wheels of dependencies missing there (dill, pulp), installed to a temp dir
set -o pipefail
logs=${OUT:-.}
if [ -n "$1" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$1"/*.whl || exit 1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader || exit 1
python3 -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available())"
timeout 200 python3 -m pytest -q -rs -p no:cacheprovider -k "cuda or persistence" tests/ 2>&1 | tee "$logs/cuda_tests.log" | tail -8
timeout 280 python3 -m pytest -q -rfs -n auto -p no:cacheprovider tests/ 2>&1 | tee "$logs/full_suite.log" | tail -22
