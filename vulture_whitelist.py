"""Reviewed vulture whitelist (`make lint` runs vulture on functions/ and client/src/ with it).

Each entry names a symbol vulture cannot see used, with the reason it stays. An entry marked
"owned by ..." is dead or test-only code in a module another part of the restructure (issue 13) moves:
the lead deletes the code and the entry when that part merges.
"""

# ruff: noqa
from vulture.whitelist_utils import Whitelist

_ = Whitelist()

# Framework hooks: set for requests/urllib3, which read them (bitrix24/transport.py).
_.ConnectionCls  # urllib3 HTTPConnectionPool builds its connections from this class attribute
_.pool_classes_by_scheme  # urllib3 PoolManager picks the pool class per scheme from it
_.trust_env  # requests.Session: off, so .netrc and proxy variables cannot change our requests

# PynamoDB model declarations (vault/models.py): read by PynamoDB's metaclass, not by our code.
_.Meta  # table and index settings of each Model/Index
_.index_name  # the GSI name PynamoDB queries
_.projection  # the GSI projection PynamoDB declares
_.received_at  # events/outbox.py LeadEventModel: when the delivery was accepted, stored for operators

# Protocol method parameters (web/errors.py LogSink): the Powertools Logger signature they mirror.
_.msg

# Parsed-answer fields kept so the value object mirrors Bitrix24's envelope.
_.total  # bitrix24/envelope.py BatchResult.total: Bitrix24's list total, kept with `next`
_.source_ip  # web/http.py HttpRequest.source_ip: API Gateway's requestContext.http.sourceIp

# Public seams the tests use instead of private attributes.
_.reset  # wiring.reset(): a cold start in the tests (tests/support/faults.py cold_start: every builder forgotten)
_.kms_calls  # vault/cipher.py: the "a warm read makes no KMS call" invariant is counted through it
_.known_codes  # bitrix24/envelope.py: the error-table test compares docs/bitrix24-errors.md with it
_.writes  # shared_pacing.py DynamoTokenBucket: DynamoDB writes made, the cost the pacing tests bound
_.conflicts  # shared_pacing.py DynamoTokenBucket: of those writes, the ones a condition refused
