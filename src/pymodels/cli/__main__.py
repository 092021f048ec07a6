"""``python -m pymodels.cli``: the same as the ``pymodels`` console script."""

import sys

from .app import main

sys.exit(main())
