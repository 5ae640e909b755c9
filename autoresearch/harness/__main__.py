"""``python -m autoresearch.harness``: see :mod:`autoresearch.harness.command`."""

import sys

from autoresearch.harness.command import main

sys.exit(main())
