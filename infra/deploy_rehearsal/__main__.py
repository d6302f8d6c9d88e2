"""python -m deploy_rehearsal: see deploy_rehearsal.cli."""

import sys

from deploy_rehearsal.cli import main

sys.exit(main())
