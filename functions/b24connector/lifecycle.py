"""LifecycleFunction's use case: one journaled job at a time (install events, uninstall checks, bindings).

A job ends in one of two ways. Done: applied, or refused for good because a claim did not hold (a
forged or mismatched event: retrying cannot change Bitrix24's answer). Retry: Bitrix24 or AWS failed,
or anything unexpected happened; the message comes back after the queue's visibility timeout and,
after maxReceiveCount tries, waits in LifecycleDLQ (alarmed) with its sealed tokens intact.
"""

from __future__ import annotations

from typing import Any, Protocol

from b24connector.install import (
    Installed,
    InstallEvent,
    Outcome,
    UninstallNotice,
    event_of,
    notice_of,
    problem_is_final,
)
from b24connector.observability import count, logger
from b24connector.problems import Problem
from b24connector.subscriptions import SubscriptionResult
from b24connector.vault.journal import JOB_GRANT, JOB_SUBSCRIBE, JOB_UNINSTALL, LifecycleJob


class Lifecycle(Protocol):
    """The install use case as the worker needs it (install.Installer)."""

    def apply(self, event: InstallEvent) -> Installed:
        """Verify and store an install event's grant."""
        ...

    def confirm_uninstall(self, notice: UninstallNotice) -> Outcome:
        """Apply an uninstall only if Bitrix24 confirms it."""
        ...


class Subscriptions(Protocol):
    """The event.bind checker (subscriptions.Subscriber)."""

    def ensure(self, member_id: str) -> SubscriptionResult:
        """Bind what is missing."""
        ...


class LifecycleWorker:
    """Runs one job; returns a short outcome, raises when the job is worth another delivery."""

    def __init__(self, lifecycle: Lifecycle, subscriptions: Subscriptions) -> None:
        self._lifecycle = lifecycle
        self._subscriptions = subscriptions

    def run(self, job: LifecycleJob) -> str:
        """The job's outcome ("stored", "refused", "bound", ...); raises to have it retried."""
        extra: dict[str, Any] = {}
        try:
            if job.kind == JOB_GRANT:
                installed = self._lifecycle.apply(event_of(job))
                outcome = installed.outcome.value
                extra = {"role": installed.role}
            elif job.kind == JOB_UNINSTALL:
                outcome = self._lifecycle.confirm_uninstall(notice_of(job)).value
            elif job.kind == JOB_SUBSCRIBE:
                result = self._subscriptions.ensure(job.member_id)
                outcome = f"subscription_{result.state.value}"
                extra = {"bound_now": list(result.bound_now), "error": result.error}
            else:  # LifecycleJob refuses unknown kinds; kept for exhaustiveness
                raise ValueError(f"unknown job kind {job.kind}")
        except Problem as problem:
            if not problem_is_final(problem):
                raise
            logger.warning(
                "lifecycle job refused",
                extra={"job": job.kind, "member_id": job.member_id, "reason": problem.reason},
            )
            count("LifecycleRefused")
            return f"refused:{problem.reason}"
        logger.info(
            "lifecycle job", extra={"job": job.kind, "member_id": job.member_id, "outcome": outcome, **extra}
        )
        count(f"Lifecycle{job.kind.title()}Done")
        return outcome
