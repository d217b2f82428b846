#!/usr/bin/env bash
# Build the documentation site (strict: any warning is an error) into build/site, or serve it.
#   bash scripts/docs.sh          # build into build/site
#   bash scripts/docs.sh serve    # serve at http://127.0.0.1:8000, rebuilding on changes
source "$(dirname "$0")/_venv.sh"
if [ "${1:-build}" = "serve" ]; then
    exec .venv/bin/python -m mkdocs serve --strict
fi
exec .venv/bin/python -m mkdocs build --strict --site-dir build/site
