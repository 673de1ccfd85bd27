"""``python -m hmar_core``: see :mod:`hmar_core.cli`."""

import sys

from .cli import main

sys.exit(main())
