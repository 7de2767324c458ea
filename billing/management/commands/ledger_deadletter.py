import re

from django.core.management.base import BaseCommand, CommandError

from billing.ledger.costs import format_cost
from billing.ledger.deadletters import (
    DeadLetter,
    deadletters_drop,
    deadletters_replay,
    deadletters_select,
)
from billing.ledger.stream import DEAD_LETTER_KEY, ledger_stream_client, ledger_streaming

DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
STREAM_ID = re.compile(r"^\d+-\d+$")


def _duration(text: str) -> float:
    match = DURATION.match(text)
    if not match:
        raise CommandError(f"--older-than '{text}' is not a duration like 90s, 30m, 12h or 7d")
    return float(match[1]) * SECONDS[match[2]]


def _describe(letter: DeadLetter) -> str:
    event = letter.event
    if event is None:
        what = "undecodable event"
    else:
        what = (
            f"request {event.request_id} tenant {event.tenant_id} team {event.team_id} key {event.api_key_id} "
            f"at {event.created_at.isoformat()} ${format_cost(event.cost_usd)}"
        )
    return f"{letter.id} (was {letter.entry_id or '?'}, dead since {letter.dead_since:%Y-%m-%d %H:%M:%S}Z) {what}"


class Command(BaseCommand):
    help = (
        f"The ledger's dead letters ({DEAD_LETTER_KEY}): records the drainer could not write. 'list' shows them; "
        "'replay' writes them into the ledger (a record already there is not written twice) and removes those now "
        "in the ledger, keeping those that still fail; 'drop' deletes them for good. --dry-run changes nothing."
    )

    def add_arguments(self, parser):
        parser.add_argument("action", choices=["list", "replay", "drop"])
        parser.add_argument(
            "--id", dest="ids", action="append", default=[], metavar="STREAM_ID", help="Only this dead letter (repeat)."
        )
        parser.add_argument("--older-than", metavar="DURATION", help="Only those dead for longer, e.g. 30m, 12h, 7d.")
        parser.add_argument("--limit", type=int, metavar="N", help="At most this many, oldest first.")
        parser.add_argument("--all", dest="drop_all", action="store_true", help="With drop: every dead letter.")
        parser.add_argument("--dry-run", action="store_true", help="Say what replay or drop would do; change nothing.")

    def handle(self, *args, action, ids, older_than, limit, drop_all, dry_run, **options):
        if not ledger_streaming():
            raise CommandError("the ledger is not streamed: set REDIS_URL (and LLMOPS_LEDGER_MODE=stream)")
        if bad := [entry_id for entry_id in ids if not STREAM_ID.match(entry_id)]:
            raise CommandError(f"--id takes stream ids like 1733350000000-0, not {', '.join(bad)}")
        if limit is not None and limit < 1:
            raise CommandError("--limit must be at least 1")
        if action == "drop" and not (ids or older_than or limit or drop_all):
            raise CommandError("drop needs --id, --older-than, --limit or --all")
        client = ledger_stream_client()
        letters = deadletters_select(
            client=client,
            ids=ids,
            older_than_seconds=_duration(older_than) if older_than else None,
            limit=limit,
        )
        prefix = "dry run: " if dry_run else ""
        if action == "list":
            for letter in letters:
                self.stdout.write(f"{_describe(letter)}\n    reason: {letter.reason}")
            self.stdout.write(f"{len(letters)} dead letters (of {client.xlen(DEAD_LETTER_KEY)} in {DEAD_LETTER_KEY})")
        elif action == "replay":
            report = deadletters_replay(client=client, letters=letters, dry_run=dry_run)
            for letter, error in report.still_failing:
                self.stdout.write(f"{prefix}still failing: {_describe(letter)}\n    {error}")
            verb = "would replay" if dry_run else "replayed"
            self.stdout.write(
                f"{prefix}{verb} {len(report.replayed)}, already in the ledger {len(report.already_in_ledger)}, "
                f"still failing {len(report.still_failing)} (kept in {DEAD_LETTER_KEY})"
            )
        else:
            dropped = deadletters_drop(client=client, letters=letters, dry_run=dry_run)
            self.stdout.write(f"{prefix}{'would drop' if dry_run else 'dropped'} {dropped} dead letters")
