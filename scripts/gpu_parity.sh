#!/usr/bin/env bash
# The GPU parity suite on the GPU machine, from the repository root: installs the wheels carried in .whl,
# if any (see scripts/gpu_parity.py's docstring for the `pip download` that fetches them), into
# /tmp/site, then runs scripts/gpu_parity.py on cuda in float32, bfloat16 and float16. References saved
# here in .parity-references are used when that folder was carried; the log goes to $OUT when it is set.
#
#   device run, carry [".whl"]:                bash scripts/gpu_parity.sh
#   device run, carry [".parity-references"]:  bash scripts/gpu_parity.sh
#   extra arguments go to the script:          bash scripts/gpu_parity.sh --dtypes float32
set -euo pipefail
cd "$(dirname "$0")/.."

if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
args=()
if [ -d .parity-references ]; then
    args+=(--references .parity-references)
fi
log=${OUT:-/tmp}/gpu_parity.log
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null || true
python3 scripts/gpu_parity.py ${args[@]+"${args[@]}"} --json "${OUT:-/tmp}/gpu_parity.json" "$@" 2>&1 | tee "$log"
