"""``python -m emflow.cli``: the same as the ``emflow`` command."""

import sys

from emflow.cli import main

sys.exit(main())
