"""b24connector_client (the typed LeadsFunction client) against the local stack's Lambda Invoke API."""

from __future__ import annotations

from typing import TYPE_CHECKING

import boto3
import pytest

from b24connector_client import PortalNotFound, ReauthRequired, fetch_leads, fetch_leads_page
from local_stack import LocalStack
from tests.e2e.helpers import admin, emulator_stats, install_app, reset_emulator_stats

if TYPE_CHECKING:
    from mypy_boto3_lambda import LambdaClient


def _lambda(stack: LocalStack) -> LambdaClient:
    client: LambdaClient = boto3.client(
        "lambda",
        endpoint_url=stack.lambda_endpoint_url,
        region_name=stack.aws_region,
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    return client


def test_fetch_leads_pages_through_every_lead(stack: LocalStack) -> None:
    # Given an installed portal
    install_app(stack)
    seeded = admin(stack, "GET", "/leads")["count"]
    reset_emulator_stats(stack)

    # When a caller iterates every lead by domain, 700 per invocation
    leads = list(
        fetch_leads(
            domain=stack.portal_domain, select=["ID", "TITLE"], limit=700, lambda_client=_lambda(stack)
        )
    )

    # Then it gets each lead once, in ID order, without a single COUNT page or token call
    ids = [int(lead["ID"]) for lead in leads]
    assert len(ids) == seeded
    assert ids == sorted(set(ids))
    stats = emulator_stats(stack)
    assert stats["count_queries"] == 0
    assert stats["token_requests"] == 0


def test_parallel_export_reads_every_lead_once_within_the_portal_budget(stack: LocalStack) -> None:
    # Given an installed portal
    install_app(stack)
    seeded = admin(stack, "GET", "/leads")["count"]
    reset_emulator_stats(stack)

    # When a caller exports with parallel parts (a first page of 300, the rest cut into parts)
    leads = list(
        fetch_leads(
            member_id=stack.member_id,
            select=["ID", "TITLE"],
            limit=300,
            parallel=3,
            lambda_client=_lambda(stack),
        )
    )

    # Then every lead arrives once, in ID order, with no COUNT page and no 503 from the portal
    ids = [int(lead["ID"]) for lead in leads]
    assert len(ids) == seeded
    assert ids == sorted(set(ids))
    stats = emulator_stats(stack)
    assert stats["count_queries"] == 0
    assert stats["http_503"] == 0


def test_client_raises_typed_errors(stack: LocalStack) -> None:
    # Given an installed portal, then the same portal uninstalled
    install_app(stack)
    client = _lambda(stack)
    with pytest.raises(PortalNotFound):
        fetch_leads_page(domain="unknown.bitrix24.com", lambda_client=client)
    answer = admin(stack, "POST", "/send-uninstall", {"url": f"{stack.api_url}/events"})
    assert answer["status"] == 202  # confirmed with Bitrix24 by LifecycleFunction
    assert stack.drain_queues().failed == 0

    # When the uninstalled portal is read, Then the caller gets ReauthRequired
    with pytest.raises(ReauthRequired):
        fetch_leads_page(member_id=stack.member_id, limit=1, lambda_client=client)
