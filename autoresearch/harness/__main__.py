"""``python -m autoresearch.harness``: see :mod:`autoresearch.harness.command`."""

from autoresearch.harness.command import exit_now, main

exit_now(main())
