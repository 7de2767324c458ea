import logging
import signal
import threading

from django.core.management.base import BaseCommand, CommandError

from billing.ledger.stream import (
    BATCH_SIZE,
    CLAIM_IDLE_MS,
    MAX_BLOCK_MS,
    POLL_SECONDS,
    default_consumer_name,
    ledger_stream_backlog,
    ledger_stream_client,
    ledger_stream_drain,
    ledger_stream_recover,
    ledger_stream_run,
    ledger_streaming,
)
from core.redis import redis_persistence_problem

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = (
        "Move the gateway's ledger stream (Redis) into UsageRecord rows in bulk. Runs until SIGTERM/SIGINT; "
        "--once drains what is there and exits. Run one or more per deployment; each needs a distinct --consumer."
    )

    def add_arguments(self, parser):
        parser.add_argument("--consumer", default="", help="Consumer name in the group; default drainer-<hostname>.")
        parser.add_argument("--once", action="store_true", help="Recover, drain the backlog, then exit.")
        parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
        parser.add_argument(
            "--poll-ms",
            type=int,
            default=int(POLL_SECONDS * 1000),
            help="Read an empty stream again after this long.",
        )
        parser.add_argument(
            "--block-ms",
            type=int,
            default=None,
            help=f"Wait on the stream for up to this long (at most {MAX_BLOCK_MS}) instead, woken by the next entry: "
            "for a drainer on cores of its own (on the gateway's, that wake takes a core in the middle of the request "
            "that appended it).",
        )
        parser.add_argument(
            "--claim-idle-seconds",
            type=float,
            default=CLAIM_IDLE_MS / 1000,
            help="Take over entries another consumer has held unacknowledged this long (it died).",
        )

    def handle(self, *args, **options):
        if not ledger_streaming():
            raise CommandError("the ledger is not streamed: set REDIS_URL (and LLMOPS_LEDGER_MODE=stream)")
        client = ledger_stream_client()
        if problem := redis_persistence_problem(client):
            logger.warning(problem)
        block_ms = options["block_ms"]
        if block_ms is not None and not 0 < block_ms <= MAX_BLOCK_MS:
            raise CommandError(f"--block-ms must be between 1 and {MAX_BLOCK_MS}")
        if options["poll_ms"] <= 0:
            # Without a pause between empty reads it would spin on Redis and take a core from the gateway.
            raise CommandError("--poll-ms must be at least 1")
        consumer = options["consumer"] or default_consumer_name()
        claim_idle_ms = int(options["claim_idle_seconds"] * 1000)
        if options["once"]:
            settled = ledger_stream_recover(client=client, consumer=consumer, claim_idle_ms=claim_idle_ms)
            while drained := ledger_stream_drain(client=client, consumer=consumer, batch_size=options["batch_size"]):
                settled += drained
            self.stdout.write(f"settled {settled} entries; backlog {ledger_stream_backlog(client=client)}")
            return
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        self.stdout.write(f"draining {consumer}; backlog {ledger_stream_backlog(client=client)}")
        ledger_stream_run(
            client=client,
            consumer=consumer,
            stop=stop,
            batch_size=options["batch_size"],
            block_ms=block_ms,
            claim_idle_ms=claim_idle_ms,
            poll_seconds=options["poll_ms"] / 1000,
        )
