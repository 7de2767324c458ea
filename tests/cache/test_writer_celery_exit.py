"""A Celery pool process writes the cache stores its batch lines and jobs queued before it ends: it ends with
os._exit, which runs no exit hook, so the writer thread's flush is hooked on the worker_process_shutdown signal that
Celery sends in the process just before.

A real process, as a pool process ends: its store queued while Postgres holds cache writes (the writer thread waits on
the lock), then Celery's own pool destructor (what billiard calls as the process ends), then os._exit. The lock is let
go once the process waits in its flush, or has exited without one."""

import subprocess
import sys
from contextlib import suppress

from routing.models import CacheEntry
from tests.cache.conftest import cache_writes_blocked
from tests.factories import TenantFactory
from tests.servers import ROOT

POOL_PROCESS_ENDING = """
import os
import sys

import django

django.setup()

from celery.concurrency.prefork import process_destructor

from routing.cache.keys import CacheControl
from routing.cache.store import cache_request_prepare, cache_store

body = {"model": "pool-model", "temperature": 0, "messages": [{"role": "user", "content": "A batch line's question"}]}
cache = cache_request_prepare(
    tenant_id=int(sys.argv[1]),
    served_model="pool-model",
    upstream="mock",
    body=body,
    rule_name="cache-everything",
    ttl_seconds=600,
    allow_nondeterministic=False,
    control=CacheControl(),
    semantic=False,
)
message = {"role": "assistant", "content": "A batch line's answer"}
cache_store(cache, answer={"choices": [{"index": 0, "message": message, "finish_reason": "stop"}]})
print("queued", flush=True)
process_destructor(os.getpid(), 0)
os._exit(0)
"""


def test_a_pool_process_writes_the_stores_it_queued_as_it_ends(process_env):
    tenant = TenantFactory()
    with cache_writes_blocked():
        ending = subprocess.Popen(
            [sys.executable, "-c", POOL_PROCESS_ENDING, str(tenant.pk)],
            cwd=ROOT,
            env=process_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert ending.stdout.readline() == "queued\n", ending.communicate(timeout=30)[1][-3000:]
        with suppress(subprocess.TimeoutExpired):
            ending.wait(timeout=1)
    _, stderr = ending.communicate(timeout=30)

    assert ending.returncode == 0, stderr[-3000:]
    entry = CacheEntry.objects.unscoped().get()
    assert (entry.tenant, entry.served_model) == (tenant, "pool-model")
