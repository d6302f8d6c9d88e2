"""Expand the AWS::Serverless transform offline, as CloudFormation would; run with SAM CLI's Python.

Rehearsal only: moto's CloudFormation has no transforms, so the rehearsal's moto server pipes each
change-set template through this module, run by `.venv-tools/bin/python` (samtranslator is SAM CLI's
own dependency, the same translator the AWS::Serverless transform runs). Reads
`{"template": str, "parameters": {...}}` on stdin, writes the expanded template as JSON on stdout.
"""

from __future__ import annotations

import json
import sys
from typing import Any


def main() -> int:
    """Read the request on stdin, print the transformed template; 1 with the reason on failure."""
    from samtranslator.model.exceptions import InvalidDocumentException
    from samtranslator.translator.transform import transform
    from samtranslator.yaml_helper import yaml_parse

    class NoManagedPolicies:
        """The template attaches no AWS managed policies, so the translator needs no IAM lookup."""

        def load(self) -> dict[str, str]:
            return {}

    request: dict[str, Any] = json.load(sys.stdin)
    template = yaml_parse(request["template"])
    try:
        expanded = transform(template, request.get("parameters") or {}, NoManagedPolicies())
    except InvalidDocumentException as exc:
        print("; ".join(str(cause) for cause in exc.causes), file=sys.stderr)
        return 1
    json.dump(expanded, sys.stdout, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
