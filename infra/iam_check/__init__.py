"""IAM proven in CI: recorded AWS calls + documented service calls, evaluated against the transformed template.

`python -m iam_check --calls .local/iam-calls.jsonl` (make test runs it after the suites, which record
the calls with `pytest --aws-call-log`). See docs/decisions/ for why @cloud-copilot/iam-simulate.
"""
