"""The ledger's dead letters: stream entries the drainer could not write (``llmops:ledger:dead``), listed, replayed
into the ledger once what stopped them is fixed, or dropped (``manage.py ledger_deadletter``).

Each dead letter keeps the original event, the reason and the stream id it had. A replay writes each event's row
the way the drainer does (idempotent on the unique ``request_id``) and then deletes the dead letters that are in
the ledger now, or were already; one that still cannot be written stays where it is, with its reason reported.
A dry run does the same inside a transaction that is rolled back, constraints checked at each row, so it reports
what a replay would do and changes nothing.
"""

import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

import redis
from django.db import DataError, IntegrityError, connection, transaction

from billing.ledger.events import UsageEvent
from billing.ledger.stream import DEAD_LETTER_KEY, EVENT_FIELD, usage_event_decode
from billing.models import UsageRecord

PAGE = 1000


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: str
    entry_id: str  # the id it had in the ledger stream
    reason: str
    event: UsageEvent | None  # None when the event cannot be decoded

    @property
    def dead_since(self) -> datetime:
        return datetime.fromtimestamp(int(self.id.split("-")[0]) / 1000, tz=UTC)


@dataclass
class ReplayReport:
    replayed: list[DeadLetter] = field(default_factory=list)
    already_in_ledger: list[DeadLetter] = field(default_factory=list)
    still_failing: list[tuple[DeadLetter, str]] = field(default_factory=list)


def _text(value: bytes | str | None) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else (value or "")


def _dead_letter(entry_id: bytes, fields: dict) -> DeadLetter:
    try:
        event = usage_event_decode(fields[EVENT_FIELD])
    except (ValueError, TypeError, KeyError):
        event = None
    return DeadLetter(
        id=_text(entry_id),
        entry_id=_text(fields.get(b"entry_id")),
        reason=_text(fields.get(b"reason")),
        event=event,
    )


def deadletters_select(
    *, client: redis.Redis, ids: list[str] | None = None, older_than_seconds: float | None = None,
    limit: int | None = None,
) -> list[DeadLetter]:  # fmt: skip
    """The dead letters, oldest first: those named by id, or dead for longer than `older_than_seconds`, at most
    `limit` of them."""
    if ids:
        found = [
            _dead_letter(*entry) for entry_id in ids for entry in client.xrange(DEAD_LETTER_KEY, entry_id, entry_id)
        ]
        return found[:limit] if limit is not None else found
    end = "+"
    if older_than_seconds is not None:
        end = f"({int((time.time() - older_than_seconds) * 1000)}-0"
    letters: list[DeadLetter] = []
    start = "-"
    while limit is None or len(letters) < limit:
        page = client.xrange(DEAD_LETTER_KEY, start, end, count=PAGE)
        letters += [_dead_letter(*entry) for entry in page]
        if len(page) < PAGE:
            break
        start = "(" + _text(page[-1][0])
    return letters[:limit] if limit is not None else letters


def _insert(event: UsageEvent) -> str:
    """Write the event's row, constraints checked at once (they are deferred to the commit otherwise, where a dry
    run never gets). Returns the error, or '' when the row is in."""
    try:
        with transaction.atomic():
            UsageRecord.objects.bulk_create([UsageRecord(**asdict(event))], ignore_conflicts=True)
            connection.check_constraints()
    except (IntegrityError, DataError) as error:
        return str(error).strip()
    return ""


def deadletters_replay(*, client: redis.Redis, letters: list[DeadLetter], dry_run: bool = False) -> ReplayReport:
    """Write the dead letters' rows into the ledger, then delete from the dead-letter stream those whose row is in
    the ledger. With `dry_run`, report the same and change nothing."""
    report = ReplayReport()
    request_ids = [letter.event.request_id for letter in letters if letter.event is not None]
    # Unscoped, reviewed: dead letters come from every tenant's requests; only their request ids are read back.
    ledger = UsageRecord.objects.unscoped()
    in_ledger = set(ledger.filter(request_id__in=request_ids).values_list("request_id", flat=True))
    with transaction.atomic():
        for letter in letters:
            if letter.event is None:
                report.still_failing.append((letter, f"undecodable ({letter.reason})"))
            elif letter.event.request_id in in_ledger:
                report.already_in_ledger.append(letter)
            elif error := _insert(letter.event):
                report.still_failing.append((letter, error))
            else:
                report.replayed.append(letter)
                in_ledger.add(letter.event.request_id)
        if dry_run:
            transaction.set_rollback(True)
    settled = [letter.id for letter in [*report.replayed, *report.already_in_ledger]]
    if settled and not dry_run:
        client.xdel(DEAD_LETTER_KEY, *settled)
    return report


def deadletters_drop(*, client: redis.Redis, letters: list[DeadLetter], dry_run: bool = False) -> int:
    """Delete the dead letters for good (their records never reach the ledger). Returns how many."""
    if not letters or dry_run:
        return len(letters)
    return client.xdel(DEAD_LETTER_KEY, *(letter.id for letter in letters))
