"""`make bench`: the connector against fast_bitrix24 and b24pysdk, cold starts, AWS calls, refresh, pacing.

Run `python -m tests.bench` (all sections, a few minutes) or `python -m tests.bench --smoke` (~30 s).
Results go to tests/bench/results.md and tests/bench/results.json; docs/performance.md explains them.
"""
