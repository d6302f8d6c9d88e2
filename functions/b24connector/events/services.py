"""The events side of the composition root: built once per container, on first use, per Settings."""

from __future__ import annotations

from functools import cache
from typing import Any

import boto3
from botocore.config import Config

from b24connector.events.bus import EventBus
from b24connector.events.lead_changes import LeadDeliveryDesk
from b24connector.events.outbox import LeadEventOutbox, bind_lead_event_model
from b24connector.events.publisher import FieldsReader, StreamPublisher
from b24connector.handlers import _services
from b24connector.settings import Settings
from b24connector.vault.models import aws_region


def _client(service: str, *, read_timeout: float) -> Any:
    return boto3.client(
        service,  # type: ignore[call-overload]
        region_name=aws_region(),
        config=Config(
            connect_timeout=3, read_timeout=read_timeout, retries={"mode": "standard", "max_attempts": 3}
        ),
    )


@cache
def lead_desk(conf: Settings) -> LeadDeliveryDesk:
    """Authenticates lead deliveries (POST /events) and records them in LeadEventsTable."""
    model = bind_lead_event_model(conf.lead_events_table, aws_region())
    return LeadDeliveryDesk(
        _services.vault(conf).portals,
        LeadEventOutbox(model),
        published=conf.lead_events,
        dedup_seconds=conf.lead_event_dedup_seconds,
    )


@cache
def bus(conf: Settings) -> EventBus:
    """PutEvents on the stack's bus."""
    return EventBus(_client("events", read_timeout=5), conf.event_bus_name)


@cache
def stream_publisher(conf: Settings) -> StreamPublisher:
    """PublisherFunction's use case; reads lead fields through LeadsFunction only when configured."""
    reader: FieldsReader | None = None
    if conf.lead_event_fields and conf.leads_function_name:
        from b24connector.events.enrichment import LeadsFunctionFields  # noqa: PLC0415

        # LeadsFunction answers within its own timeout (120 s); the read waits for it.
        reader = LeadsFunctionFields(_client("lambda", read_timeout=125), conf.leads_function_name)
    return StreamPublisher(bus(conf), fields=conf.lead_event_fields, reader=reader)
