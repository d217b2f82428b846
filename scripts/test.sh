#!/usr/bin/env bash
# Install into .venv and run the whole test suite: ruff, mypy (strict on hcref/, default on the backends and the suite), pytest.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -k reference`).
source "$(dirname "$0")/_venv.sh"
.venv/bin/ruff check .
.venv/bin/mypy hcref backends conformance/hcref_conformance
status=0
.venv/bin/python -m pytest "$@" || status=$?
# exit code 5 means "no tests collected", which a -k filter can legitimately produce
if [ "$status" -eq 5 ]; then status=0; fi
exit "$status"
