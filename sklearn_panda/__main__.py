"""``python -m sklearn_panda``: the ``sklearn-panda`` command line (see :mod:`sklearn_panda.cli`)."""

import sys

from .cli import main

# Guarded so that importing this module (a test collector, a documentation tool) runs nothing.
if __name__ == "__main__":
    sys.exit(main())
