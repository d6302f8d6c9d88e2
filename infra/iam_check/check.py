"""The IAM check: every recorded and service-made request allowed, every granted action used."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iam_check.requests import Request, RequestBuilder
from iam_check.simulator import simulate
from iam_check.stack import Role, Stack, StackError
from local_stack.template import ACCOUNT_ID

DEFAULT_EXPECTED_UNUSED = Path(__file__).with_name("expected_unused.txt")


@dataclass(frozen=True, order=True)
class Grant:
    """One action on one resource pattern of one identity-policy statement."""

    role: str
    policy: str
    sid: str
    action: str
    resource: str  # as written in the policy (resolved)
    label: str  # the resource as a logical ID where one matches

    def key(self) -> tuple[str, str, str]:
        """How expected_unused.txt names it: role, action, resource label."""
        return (self.role, self.action, self.label)

    def __str__(self) -> str:
        return f"{self.role} {self.action} {self.label} (statement {self.sid} of policy {self.policy})"


@dataclass
class Report:
    """What the check found."""

    env: str
    calls_per_function: dict[str, int] = field(default_factory=dict)
    requests: int = 0  # distinct requests evaluated
    recorded_requests: int = 0
    service_requests: int = 0
    actions_per_role: dict[str, list[str]] = field(default_factory=dict)
    denials: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    unused: list[Grant] = field(default_factory=list)
    expected_unused: list[Grant] = field(default_factory=list)  # unused and listed: tolerated for now
    stale_expected: list[str] = field(default_factory=list)  # listed but used (or gone): remove them
    functions_without_calls: list[str] = field(default_factory=list)
    other_template_calls: int = 0  # recorded from local stacks running tests' own small templates

    @property
    def unexpected_unused(self) -> list[Grant]:
        """Unused grants not in expected_unused.txt."""
        return [grant for grant in self.unused if grant not in self.expected_unused]

    @property
    def ok(self) -> bool:
        """No denial, no error, no unused grant beyond the list, no stale list entry."""
        return not (self.denials or self.errors or self.unexpected_unused or self.stale_expected)

    def text(self) -> str:
        """The report as printed by `python -m iam_check`."""
        lines = [f"IAM check ({self.env}): transformed template, @cloud-copilot/iam-simulate"]
        lines.append("recorded AWS calls per function:")
        lines += [f"  {fn}: {n}" for fn, n in sorted(self.calls_per_function.items())]
        lines += [f"  {fn}: 0 (no test made it run)" for fn in self.functions_without_calls]
        if self.other_template_calls:
            lines.append(
                f"  (not counted: {self.other_template_calls} calls of functions of tests' own templates)"
            )
        actions = sum(len(a) for a in self.actions_per_role.values())
        lines.append(
            f"requests evaluated: {self.requests} distinct ({self.recorded_requests} from recorded calls, "
            f"{self.service_requests} made by AWS services for the roles); {actions} role x action pairs"
        )
        lines.append(f"denials: {len(self.denials)}")
        lines += [f"  DENIED {d}" for d in self.denials]
        lines.append(f"errors: {len(self.errors)}")
        lines += [f"  ERROR {e}" for e in self.errors]
        lines.append(
            f"granted but unused: {len(self.unused)} ({len(self.expected_unused)} listed in expected_unused.txt)"
        )
        for grant in self.unused:
            tag = "expected (listed)" if grant in self.expected_unused else "UNUSED"
            lines.append(f"  {tag}: {grant}")
        for entry in self.stale_expected:
            lines.append(f"  STALE expected_unused.txt entry (now used or gone; delete the line): {entry}")
        lines.append("result: " + ("PASS" if self.ok else "FAIL"))
        return "\n".join(lines)


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def grants(stack: Stack, roles: Mapping[str, Role]) -> tuple[list[Grant], list[str]]:
    """Every Allow action x resource of every role's identity policies (and what cannot be modelled)."""
    found: list[Grant] = []
    errors: list[str] = []
    for role in roles.values():
        for policy in role.policies:
            for index, statement in enumerate(_as_list(policy["policy"].get("Statement") or []), start=1):
                sid = str(statement.get("Sid") or index)
                if statement.get("Effect") != "Allow":
                    continue
                if "NotAction" in statement or "NotResource" in statement:
                    errors.append(
                        f"{role.logical_id} statement {sid}: NotAction/NotResource is not checked for use"
                    )
                    continue
                for action in _as_list(statement.get("Action")):
                    for resource in _as_list(statement.get("Resource")):
                        found.append(Grant(role.logical_id, policy["name"], sid, str(action), str(resource),
                                           stack.label(str(resource))))  # fmt: skip
    return found, errors


def read_expected_unused(path: Path | None) -> set[tuple[str, str, str]]:
    """`Role action Resource` lines (# comments) of grants known to be unused until a fix merges."""
    if path is None or not path.exists():
        return set()
    entries: set[tuple[str, str, str]] = set()
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 3:
            raise StackError(f"{path}:{number}: expected `Role action Resource`, got {line!r}")
        entries.add((parts[0], parts[1], parts[2]))
    return entries


def _simulation_input(
    request: Request, index: int, roles: Mapping[str, Role], stack: Stack
) -> dict[str, Any]:
    resource_policy = None
    if request.resource_policy is not None:
        kind = stack.type_of(request.resource_policy)
        if kind == "AWS::KMS::Key":
            resource_policy = stack.key_policy(request.resource_policy)
        elif kind == "AWS::SQS::Queue":
            resource_policy = stack.queue_policy(request.resource_policy)
    identity = roles[request.role].policies if request.role else []
    return {
        "id": index,
        "principal": request.principal,
        "action": request.action,
        "resource": request.resource,
        "accountId": ACCOUNT_ID,
        "context": request.context_dict(),
        "identityPolicies": identity,
        "resourcePolicy": resource_policy,
    }


def _describe(request: Request, stack: Stack) -> str:
    context = {
        k: v
        for k, v in request.context_dict().items()
        if k not in ("aws:SecureTransport", "aws:RequestedRegion")
    }
    who = request.role or request.principal
    return f"{who} {request.action} on {stack.label(request.resource)} {context} [{request.origin}]"


def _judge(
    request: Request, answer: Mapping[str, Any], stack: Stack, report: Report
) -> set[tuple[str, str, str, str, str]]:
    """Record a denial or error for one answer; the (role, policy, sid, action, resource) grants it used."""
    if answer.get("result") == "Error":
        report.errors.append(f"simulator refused {_describe(request, stack)}: {answer.get('errors')}")
        return set()
    if answer.get("ignoredContextKeys"):
        report.errors.append(
            f"context keys not valid for {request.action}: {answer['ignoredContextKeys']} ({_describe(request, stack)})"
        )
    if answer.get("result") != "Allowed":
        detail = f"identity policies alone: {answer.get('identityOnly')}"
        if "resourceOnly" in answer:
            detail += f", resource policy alone: {answer['resourceOnly']}"
        if answer.get("resourceDenies"):
            detail += f", denied by resource-policy statements {answer['resourceDenies']}"
        report.denials.append(f"{answer.get('result')}: {_describe(request, stack)} ({detail})")
        return set()
    return {
        (request.role, allow["policy"], str(allow["sid"]), action.lower(), resource)
        for allow in answer.get("identityAllows") or []
        for action in allow["actions"]
        for resource in allow["resources"]
    }


def run_check(
    template: Path,
    calls: Sequence[Mapping[str, Any]],
    *,
    env: str = "dev",
    samconfig: Path | None = None,
    expected_unused: Path | None = DEFAULT_EXPECTED_UNUSED,
) -> Report:
    """Evaluate the recorded calls and the service-made calls against the transformed template."""
    stack = Stack(template, env=env, samconfig=samconfig)
    builder = RequestBuilder(stack)
    report = Report(env=env)
    checked = str(template.resolve())
    ours = [c for c in calls if not c.get("template") or c["template"] == checked]
    report.other_template_calls = sum(1 for c in calls if c.get("template") and c["template"] != checked)
    recording = builder.recorded(ours)
    report.calls_per_function = recording.calls
    report.errors += recording.unresolved
    report.functions_without_calls = sorted(set(builder.functions) - set(recording.calls))
    if not recording.calls:
        report.errors.append("no recorded calls: run the suites with --aws-call-log first (make test)")
    service = builder.service_requests()
    requests = list(dict.fromkeys([*recording.requests, *service]))
    report.requests = len(requests)
    report.recorded_requests = sum(1 for r in requests if r.origin == "recorded")
    report.service_requests = len(requests) - report.recorded_requests
    role_actions: dict[str, set[str]] = {}
    for request in requests:
        role_actions.setdefault(request.role or request.principal, set()).add(request.action)
    report.actions_per_role = {role: sorted(actions) for role, actions in sorted(role_actions.items())}

    answers = simulate([_simulation_input(r, i, builder.roles, stack) for i, r in enumerate(requests)])
    used: set[tuple[str, str, str, str, str]] = set()
    for request, answer in zip(requests, answers, strict=True):
        used |= _judge(request, answer, stack, report)

    all_grants, grant_errors = grants(stack, builder.roles)
    report.errors += grant_errors
    listed = read_expected_unused(expected_unused)
    for grant in all_grants:
        if (grant.role, grant.policy, grant.sid, grant.action.lower(), grant.resource) in used:
            continue
        report.unused.append(grant)
        if grant.key() in listed:
            report.expected_unused.append(grant)
    unused_keys = {grant.key() for grant in report.unused}
    report.stale_expected = [" ".join(entry) for entry in sorted(listed - unused_keys)]
    return report
