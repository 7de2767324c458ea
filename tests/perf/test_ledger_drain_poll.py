"""The drainer polls an empty ledger stream instead of waiting on it: a read blocked on the stream returns the
moment the gateway appends a record, and on the gateway's cores that wake took a core inside the request whose
settle appended it (docs/performance.md)."""

import threading
import time

import pytest
import redis
from django.conf import settings

from billing.ledger.stream import ledger_stream_run, ledger_streaming

pytestmark = pytest.mark.skipif(not ledger_streaming(), reason="the ledger is streamed only with REDIS_URL")

NAME = "idle-drainer-test"


def test_an_idle_drainer_reads_the_stream_without_blocking_on_it():
    drainer_client = redis.Redis.from_url(settings.REDIS_URL, client_name=NAME)
    observer = redis.Redis.from_url(settings.REDIS_URL)
    stop = threading.Event()
    # No claim of other consumers' entries: this test reads and writes no ledger row.
    kwargs = {"client": drainer_client, "consumer": NAME, "stop": stop, "poll_seconds": 0.02, "claim_idle_ms": 10**9}
    thread = threading.Thread(target=ledger_stream_run, kwargs=kwargs, daemon=True)
    thread.start()
    try:
        reads = []
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            reads += [entry for entry in observer.client_list() if entry["name"] == NAME and entry["cmd"] != "NULL"]
            time.sleep(0.005)
    finally:
        stop.set()
        thread.join(timeout=5)
        drainer_client.close()
        observer.close()

    assert any(entry["cmd"] in ("xreadgroup", "xautoclaim") for entry in reads)
    assert [entry for entry in reads if "b" in entry["flags"]] == []
