"""``python -m gatedattn`` (and ``torchrun -m gatedattn``): the ``gatedattn`` command."""

import sys

from .cli.main import main

sys.exit(main())
