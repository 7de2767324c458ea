"""How often a provider batch that keeps failing is polled, and what its failure tells the tenant."""

from datetime import UTC, datetime, timedelta

import httpx

from llmops.gateway.batches.delegation import _backoff, _poll_failure


def test_each_failed_poll_in_a_row_doubles_the_wait_for_the_next_up_to_the_most(settings):
    settings.LLMOPS_BATCH_POLL_SECONDS = 30
    now = datetime(2026, 12, 7, tzinfo=UTC)
    state, waits = {"status": "in_progress"}, []
    for _ in range(7):
        state = {**state, **_backoff(state, now)}
        waits.append(datetime.fromisoformat(state["next_poll_at"]) - now)

    assert state["poll_failures"] == 7
    assert waits == [timedelta(seconds=seconds) for seconds in (30, 60, 120, 240, 480, 600, 600)]


def test_a_poll_failure_names_neither_the_providers_address_nor_its_words():
    request = httpx.Request("GET", "https://internal.example/v1/batches/batch_1")
    refused = httpx.HTTPStatusError("secret", request=request, response=httpx.Response(503, request=request))

    assert _poll_failure(refused) == "it answered HTTP 503"
    assert _poll_failure(httpx.ConnectError("internal.example refused", request=request)) == "it could not be reached"
    assert _poll_failure(KeyError("status")) == "its answer could not be read"
