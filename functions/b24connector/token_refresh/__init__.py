"""Token refresh: keeping every portal's single-use refresh-token chain alive (docs/token-refresh.md).

- coordinator.py: RefreshCoordinator, the one entry point; the lazy refresh after expired_token and
  the adoption of a newer stored pair after invalid_token (the race between containers).
- lease_holder.py: LeaseHolder, what the worker holding a portal's lease does: spend the refresh token
  once, commit the answer by version, adopt a newer pair, or hand it to the rescue queue.
- scheduled.py: the sweep (RefreshFunction), the worker (RefreshWorkerFunction) and ScheduledRefresh,
  the refresh of one due portal.
- rescue.py: rescue of lost commits: the sealed message, its SQS queue, apply_rescue and the worker
  (TokenRescueFunction).
- renames.py: what a refresh answer's endpoints may change (a portal rename).
- policy.py, outcomes.py: the timing, and the outcome names with their log line and metric.
"""
