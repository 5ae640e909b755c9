"""``python -m autoresearch.harness``: see :mod:`autoresearch.harness.command`."""

from autoresearch.harness.command import main
from autoresearch.harness.warm import exit_now

exit_now(main())
