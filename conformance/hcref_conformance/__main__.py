"""``python -m hcref_conformance``: see :mod:`hcref_conformance.cli`."""

import sys

from .cli import main

sys.exit(main())
