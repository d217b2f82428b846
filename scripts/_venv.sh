# Sourced by the scripts beside it: make .venv (once) and install hcref with every backend
# and the dev tools into it. torch is pinned to 2.13.0 in the dev extra: any other spec
# pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ ! -x .venv/bin/python ]; then
    "${PYTHON:-python3}" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
