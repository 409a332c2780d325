#!/usr/bin/env bash
# Set up a virtual environment in .venv with phasefit and its test dependencies.
#
# torch: the project needs torch>=2.4. PHASEFIT_TORCH chooses what this script installs
# when the venv has no torch yet; the default is the CPU-friendly 2.13.0 that our CI and
# development machines hold locally. With a GPU, install the torch build you want first
# (or set PHASEFIT_TORCH="torch"), and this script keeps it.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    .venv/bin/pip install --quiet "${PHASEFIT_TORCH:-torch==2.13.0}"
fi
.venv/bin/pip install --quiet -e ".[test]"
echo "phasefit installed in .venv (run .venv/bin/phasefit --help)"
