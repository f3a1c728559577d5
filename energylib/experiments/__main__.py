"""``python -m energylib.experiments`` (see :mod:`energylib.experiments.cli`)."""

import sys

from .cli import main

sys.exit(main())
