"""Portal lifecycle and lead changes published as EventBridge events (README "Events").

- catalogue.py: the event catalogue (source, detail-types, detail fields); nothing else reaches a bus.
- portal_changes.py: lifecycle events read from PortalsTable's stream (an outbox: an event exists
  exactly when its change was committed, whichever function made it).
- lead_changes.py: ONCRMLEAD* deliveries, authenticated by the stored application token and recorded
  once per delivery in LeadEventsTable (the dedup key; its stream publishes).
- publisher.py / bus.py / enrichment.py: stream records to PutEvents, optionally with the lead's fields.
"""
