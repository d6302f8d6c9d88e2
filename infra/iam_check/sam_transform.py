"""Run the SAM transform offline (samtranslator, as `sam validate`/`sam build` do) and print the JSON.

Runs under .venv-tools' Python, where samtranslator is installed with the SAM CLI:
    .venv-tools/bin/python infra/iam_check/sam_transform.py template.yaml '{"AWS::Region": "eu-central-1", ...}'
Every role in the template is written out and no `Policies`/managed policy names are used by SAM
functions, so the managed-policy loader (an IAM ListPolicies call in SAM CLI) is never needed; if a
template starts needing it, this fails instead of guessing.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any


class _NoManagedPolicies:
    """Stands in for SAM's ManagedPolicyLoader, which would call IAM."""

    def load(self) -> dict[str, str]:
        raise SystemExit(
            "the template uses SAM managed policy names; the offline transform cannot resolve them"
        )


def _as_packaged(template: dict[str, Any]) -> None:
    # `sam package`/`sam deploy` upload local CodeUri/ContentUri folders and substitute S3 locations
    # (`sam validate` does the same with placeholders); what the code is does not change any IAM.
    sections = [(template.get("Globals") or {}).get("Function") or {}]
    sections += [(r.get("Properties") or {}) for r in (template.get("Resources") or {}).values()]
    for props in sections:
        for key in ("CodeUri", "ContentUri"):
            value = props.get(key)
            if isinstance(value, str) and not value.startswith("s3://"):
                props[key] = f"s3://packaged-artifacts/{value.strip('/') or 'root'}"


def main(argv: list[str]) -> int:
    """Transform argv[1] with the parameter values in argv[2] (JSON) and print the result."""
    from samtranslator.translator.transform import transform
    from samtranslator.yaml_helper import yaml_parse

    template: dict[str, Any] = yaml_parse(Path(argv[1]).read_text(encoding="utf-8"))
    parameters: dict[str, Any] = json.loads(argv[2])
    _as_packaged(template)
    # SAM fills AWS::Region from the boto session; no credentials are needed or used.
    os.environ["AWS_DEFAULT_REGION"] = str(parameters["AWS::Region"])
    transformed: dict[str, Any] = transform(template, parameters, _NoManagedPolicies())
    json.dump(transformed, sys.stdout, indent=1, sort_keys=True, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
