"""Lambda entry points, one module per function (template.yaml's Handler).

Cold start: importing a handler builds tens of thousands of long-lived objects (boto3, PynamoDB models,
Powertools, our own), none of them garbage, yet their allocation sets off the cyclic collector's passes
over them again and again. Importing this package pauses the collector; every handler module ends with
`import_done()`, which freezes what the import built (later collections skip it) and resumes collecting.
Measured by `make bench` (cold start section); tests/handlers/test_handler_gc.py holds every
handler of the template to it.
"""

import gc

gc.disable()


def import_done() -> None:
    """A handler module's last statement: freeze the objects its import built and resume collecting."""
    gc.freeze()
    gc.enable()
