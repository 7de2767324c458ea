"""`manage.py ledger_deadletter list|replay|drop`: records the drainer set aside are listed, replayed into the ledger
once what stopped them is fixed (each row once, whatever is already there), or dropped; a dry run changes nothing.
Real Redis and Postgres: the records reach the dead-letter stream through the drainer itself."""

import asyncio
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db.models import Sum
from django.utils import timezone

from billing.ledger.events import UsageEvent
from billing.ledger.services import usage_record_create
from billing.ledger.stream import (
    DEAD_LETTER_KEY,
    EVENT_FIELD,
    STREAM_KEY,
    ledger_event_append,
    ledger_stream_client,
    usage_event_encode,
)
from billing.models import UsageRecord
from tenants.services import api_key_create
from tests.factories import TeamFactory, TenantFactory

# A team the database does not have yet (a drainer pointed at the wrong database sees the same): every record
# naming it is set aside until it exists.
LATE_TEAM_ID = 910_001
NEVER_TEAM_ID = 910_002
# Before any the drainer sets aside now: the dead-letter stream's ids are the time a record was set aside.
OLD_DEAD_LETTER_ID = "1700000000000-0"


@pytest.fixture
def client(transactional_db, ledger_drainer):
    """The test plays the drainer: the session's drainer thread is paused so the streams stay as the test leaves
    them."""
    with ledger_drainer.paused():
        yield ledger_stream_client()


@pytest.fixture
def tenant_key(client):
    tenant = TenantFactory(slug="stranded")
    api_key, _ = api_key_create(team=TeamFactory(tenant=tenant, slug="present"), name="stranded key")
    return tenant, api_key


def events(tenant_key, count: int, *, team_id: int, prefix: str) -> list[UsageEvent]:
    tenant, api_key = tenant_key
    now = timezone.now()
    return [
        UsageEvent(
            request_id=f"req_{prefix}_{index:03d}",
            tenant_id=tenant.id,
            team_id=team_id,
            api_key_id=api_key.id,
            created_at=now,
            http_status=200,
            served_model="dead-small",
            prompt_tokens=10 + index,
            completion_tokens=5,
            cost_usd=Decimal("0.0000012345") * (index + 1),
        )
        for index in range(count)
    ]


def run(*args) -> str:
    out = StringIO()
    call_command("ledger_deadletter", *args, stdout=out)
    return out.getvalue()


def strand(client, stranded: list[UsageEvent]) -> None:
    """Append the records as the gateway does, plus one that cannot be decoded, and let the drainer set them aside."""

    async def append():
        for event in stranded:
            await ledger_event_append(event=event)

    asyncio.run(append())
    client.xadd(STREAM_KEY, {EVENT_FIELD: b"{not json"})
    call_command("ledger_drain", "--once", "--consumer", "deadletter-test", stdout=StringIO())
    assert client.xlen(STREAM_KEY) == 0


def test_replay_writes_each_record_once_keeps_what_still_fails_and_a_dry_run_changes_nothing(client, tenant_key):
    late = events(tenant_key, 5, team_id=LATE_TEAM_ID, prefix="late")
    never = events(tenant_key, 2, team_id=NEVER_TEAM_ID, prefix="never")
    strand(client, [*late, *never])
    listed = run("list")

    assert client.xlen(DEAD_LETTER_KEY) == 8 and not UsageRecord.objects.unscoped().exists()
    assert "8 dead letters (of 8 in llmops:ledger:dead)" in listed
    assert all(event.request_id in listed for event in [*late, *never]) and "undecodable event" in listed

    # The fix: the team exists now. One record reached the ledger meanwhile by another way.
    TeamFactory(id=LATE_TEAM_ID, tenant=tenant_key[0], slug="late")
    usage_record_create(event=late[0])
    dry = run("replay", "--dry-run")

    assert "dry run: would replay 4, already in the ledger 1, still failing 3" in dry
    assert client.xlen(DEAD_LETTER_KEY) == 8
    assert list(UsageRecord.objects.unscoped().values_list("request_id", flat=True)) == [late[0].request_id]

    replayed = run("replay")
    again = run("replay")

    assert "replayed 4, already in the ledger 1, still failing 3 (kept in llmops:ledger:dead)" in replayed
    assert "replayed 0, already in the ledger 0, still failing 3" in again
    assert sorted(UsageRecord.objects.unscoped().values_list("request_id", flat=True)) == [
        event.request_id for event in late
    ]
    assert UsageRecord.objects.unscoped().aggregate(total=Sum("cost_usd"))["total"] == sum(
        event.cost_usd for event in late
    )
    kept = [fields[EVENT_FIELD] for _id, fields in client.xrange(DEAD_LETTER_KEY)]
    assert len(kept) == 3 and b"{not json" in kept
    assert all(any(event.request_id.encode() in raw for raw in kept) for event in never)
    assert "still failing: " in replayed and "violates foreign key constraint" in replayed


def test_list_and_drop_select_by_id_age_and_count_and_drop_needs_a_selection(client, tenant_key):
    (old,) = events(tenant_key, 1, team_id=NEVER_TEAM_ID, prefix="old")
    fields = {EVENT_FIELD: usage_event_encode(old), b"reason": b"set aside long ago", b"entry_id": b"1699999999999-0"}
    client.xadd(DEAD_LETTER_KEY, fields, id=OLD_DEAD_LETTER_ID)
    strand(client, events(tenant_key, 3, team_id=NEVER_TEAM_ID, prefix="new"))
    ids = [entry_id.decode() for entry_id, _fields in client.xrange(DEAD_LETTER_KEY)]

    assert ids[0] == OLD_DEAD_LETTER_ID and len(ids) == 5
    assert "1 dead letters" in run("list", "--older-than", "1d") and OLD_DEAD_LETTER_ID in run(
        "list", "--older-than", "1d"
    )
    assert "2 dead letters (of 5" in run("list", "--limit", "2")
    assert "req_new_000" in run("list", "--id", ids[2]) and "1 dead letters" in run("list", "--id", ids[2])
    with pytest.raises(CommandError, match="drop needs"):
        run("drop")
    with pytest.raises(CommandError, match="stream ids"):
        run("list", "--id", "req_new_001")
    with pytest.raises(CommandError, match="duration"):
        run("list", "--older-than", "yesterday")

    assert "dry run: would drop 1 dead letters" in run("drop", "--older-than", "1d", "--dry-run")
    assert client.xlen(DEAD_LETTER_KEY) == 5
    assert "dropped 1 dead letters" in run("drop", "--older-than", "1d")
    assert "dropped 1 dead letters" in run("drop", "--id", ids[1])
    assert [entry_id.decode() for entry_id, _ in client.xrange(DEAD_LETTER_KEY)] == ids[2:]
    assert "still failing 1" in run("replay", "--id", ids[2]) and client.xlen(DEAD_LETTER_KEY) == 3
    assert "dropped 3 dead letters" in run("drop", "--all")
    assert client.xlen(DEAD_LETTER_KEY) == 0 and not UsageRecord.objects.unscoped().exists()
