"""``python -m asyncsourcing``: the ``asyncsourcing`` command (:mod:`.cli`)."""

import sys

from asyncsourcing.cli import main

if __name__ == "__main__":
    sys.exit(main())
