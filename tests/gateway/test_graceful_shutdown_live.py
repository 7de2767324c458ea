"""A gateway worker stopped gracefully (SIGTERM, as a deploy or a process manager stops it) writes the ledger rows and
settlements its requests left running in the background before it exits: the row of a client that went away is not
lost with the process.

Real processes: uvicorn serving the gateway against the committed test database and the test Redis, the mock upstream
over loopback. Redis is reached through a proxy that can stall, so the background work is still running when the
worker is told to stop: the row's append to the ledger stream hangs until its timeout (2 s), then goes to Postgres.
"""

import http.client
import json
import signal
import threading
from urllib.parse import urlsplit

from django.conf import settings

from billing.models import UsageRecord
from tests.conftest import gateway_process, make_tenant_setup
from tests.e2e.conftest import wait_for
from tests.factories import ModelFactory
from tests.servers import TcpProxy


class StallingProxy(TcpProxy):
    """A TCP proxy that, once ``stalled`` is set, forwards nothing more either way, as a Redis that stopped answering:
    what is sent through it is dropped, never delivered late."""

    def __init__(self, target: tuple[str, int]):
        super().__init__(target)
        self.stalled = threading.Event()

    def _pump(self, source, sink) -> None:
        try:
            while data := source.recv(65536):
                if not self.stalled.is_set():
                    sink.sendall(data)
        except OSError:
            pass
        finally:
            self._drop(source)
            self._drop(sink)


def request_in_flight(port: int, key: str, model: str, upstream) -> http.client.HTTPConnection:
    """A chat completion sent, once the upstream has it (the mock stalls before answering); its answer unread."""
    served = upstream.app.requests_served
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "Still there?"}], "max_tokens": 20})
    connection.request(
        "POST",
        "/v1/chat/completions",
        body=body,
        headers={"authorization": f"Bearer {key}", "content-type": "application/json"},
    )
    wait_for(lambda: upstream.app.requests_served > served, timeout=20, what="the upstream receives the request")
    return connection


def test_a_worker_stopped_with_sigterm_first_writes_the_row_of_a_client_that_went_away(
    process_env, mock_upstream, gateway_port
):
    setup = make_tenant_setup(mock_upstream.url, slug="leaving")
    stalling = ModelFactory(name="leaving-stall", provider=setup.small.provider, upstream_name="mock-small-stall")
    setup.tenant.model_access.allowed_models.add(stalling)
    redis_url = urlsplit(settings.REDIS_URL)
    with StallingProxy((redis_url.hostname, redis_url.port or 6379)) as redis_proxy:
        env = {**process_env, "REDIS_URL": redis_proxy.url_for(settings.REDIS_URL), "LLMOPS_CACHE_EMBEDDER": ""}
        gateway = gateway_process(env, gateway_port).start()
        try:
            client = request_in_flight(gateway_port, setup.key, stalling.name, mock_upstream)
            redis_proxy.stalled.set()
            # The client goes away: the request's 499 row is written by a task of its own, which Redis now holds up.
            client.close()
            gateway.process.send_signal(signal.SIGTERM)
            gateway.process.wait(timeout=30)
        finally:
            gateway.stop()

    row = UsageRecord.objects.for_tenant(setup.tenant).get()
    assert (row.served_model, row.http_status, row.error_code) == (stalling.name, 499, "client_disconnected")
