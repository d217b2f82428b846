#!/usr/bin/env bash
# The main job: install into .venv and run the conformance suite over every installed first-party
# backend (hcref_numpy, hcref_torch, hcref_jax, hcref_mlx), two at a time, with the quick profile.
# Shows a progress line per backend as it goes, each backend's summary as it finishes, and writes
# conformance-report.json and conformance-report.md in the current folder (--report-json PATH and
# --report-md PATH choose where). Extra arguments go to `python -m hcref_conformance --all`
# (e.g. `--profile default`, `--only hcref_torch,hcref_jax`, `--dtypes float64,float32,mixed`).
source "$(dirname "$0")/_venv.sh"
exec .venv/bin/python -m hcref_conformance --all "$@"
