#!/usr/bin/env bash
# Install into .venv and run the conformance suite over every first-party backend
# (hcref_numpy, hcref_torch, hcref_jax, hcref_mlx), printing one summary per backend.
# Extra arguments go to `python -m hcref_conformance` (e.g. `--max-examples 200`).
source "$(dirname "$0")/_venv.sh"
exec .venv/bin/python -m hcref_conformance --all "$@"
