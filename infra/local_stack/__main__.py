"""``python -m local_stack serve`` (and ``demo``)."""

import sys

from local_stack.cli import main

sys.exit(main())
