"""python -m deploy_rehearsal.moto_server: moto's server with the rehearsal's workarounds (moto_shim).

A module of its own so the shim's model classes live in `deploy_rehearsal.moto_shim`, not
`__main__` (moto files model classes by their module name).
"""

import os
import sys

from deploy_rehearsal.moto_shim import main

if __name__ == "__main__":
    status = main()
    sys.stdout.flush()
    os._exit(status)  # in-memory state goes with the process (as in local_stack.moto_process)
