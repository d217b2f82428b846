# Sourced by the scripts beside it: make .venv (once) and install hcref with every backend
# and the dev tools into it (the `dev` extra of pyproject.toml).
# torch: `dev` pins torch==2.13.0, the version CI tests. The project's machines hold a local CPU
# wheel of it, which pip prefers; elsewhere PyPI's build of it on Linux is the multi-GB CUDA one:
# set HCREF_TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu to take PyTorch's CPU build
# (its "+cpu" version sorts above PyPI's, so pip picks it).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ ! -x .venv/bin/python ]; then
    "${PYTHON:-python3}" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[dev]" \
    ${HCREF_TORCH_INDEX_URL:+--extra-index-url "$HCREF_TORCH_INDEX_URL"}
