"""Ledger events in the Redis stream outlive the gateway version that wrote them."""

from datetime import UTC, datetime
from decimal import Decimal

import orjson

from billing.ledger.events import UsageEvent
from billing.ledger.stream import usage_event_decode, usage_event_encode


def test_an_event_written_before_a_field_was_added_decodes_with_its_default():
    event = UsageEvent(
        request_id="req-old",
        created_at=datetime(2026, 12, 1, tzinfo=UTC),
        tenant_id=1,
        team_id=2,
        api_key_id=3,
        http_status=200,
        cost_usd=Decimal("0.0012345678"),
        saved_provider_cache_usd=Decimal("-0.0000040000"),
    )
    assert usage_event_decode(usage_event_encode(event)) == event
    written_before = orjson.loads(usage_event_encode(event))
    del written_before["saved_provider_cache_usd"]

    decoded = usage_event_decode(orjson.dumps(written_before))

    assert decoded.saved_provider_cache_usd == 0
    assert decoded.cost_usd == Decimal("0.0012345678")
