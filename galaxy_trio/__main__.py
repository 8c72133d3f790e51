"""``python -m galaxy_trio``: see :mod:`galaxy_trio.cli`."""

import sys

from .cli import main

sys.exit(main())
