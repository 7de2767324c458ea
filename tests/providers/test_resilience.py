"""Retries, fallbacks down the model chain and the circuit breaker, against real servers on loopback and Redis."""

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from core.redis import async_redis
from routing import upstream
from routing.providers.base import parse_retry_after
from routing.resilience import (
    CLEAN_VERDICT_SECONDS,
    BilledFailure,
    BreakerPolicy,
    ChainProgress,
    CircuitBreaker,
    CircuitOpen,
    RetryPolicy,
    call_with_fallbacks,
)
from tests.loops import run
from tests.providers.conftest import chunks_of, collect_stream, model_entry, provider_entry, streamed_text
from tests.servers import free_port

FAST = RetryPolicy(attempts_per_model=2, max_attempts=6, deadline_seconds=10, base_delay_seconds=0.01)
NEVER_OPENS = BreakerPolicy(failure_threshold=1000)
BODY = {"messages": [{"role": "user", "content": "hello fallback"}]}


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def openai_model(mock_upstream, upstream_name: str, *, timeout: float = 5.0, base_url: str | None = None):
    provider = provider_entry("openai", base_url or f"{mock_upstream.url}/v1", name=unique("mock"), timeout=timeout)
    return model_entry(unique(upstream_name), provider, upstream_name)


def complete(entry):
    return upstream.chat_completion(entry.provider, {**BODY, "model": entry.upstream_name})


def fallbacks(chain, *, policy=FAST, breaker_policy=NEVER_OPENS, attempt=complete):
    return run(call_with_fallbacks(chain, attempt, policy=policy, breaker_policy=breaker_policy))


@pytest.mark.parametrize("failing_name", ["mock-fail-503", "mock-fail-429", "mock-fail-500", "mock-fail-408"])
def test_falls_back_after_retrying_a_failing_status(mock_upstream, failing_name):
    failing, healthy = openai_model(mock_upstream, failing_name), openai_model(mock_upstream, "mock-small")

    result = fallbacks([failing, healthy])

    assert result.served == healthy
    assert result.attempts == 3  # two tries on the failing model, one on the healthy one
    assert result.value.body["choices"][0]["message"]["content"].startswith("Mock answer")
    assert result.billed_failures == ()  # an error status is not billed


def test_answers_that_cannot_be_used_are_kept_as_billed_failures_of_their_model(mock_upstream):
    malformed = openai_model(mock_upstream, "mock-malformed-usage-text")
    healthy = openai_model(mock_upstream, "mock-small")

    result = fallbacks([malformed, healthy])

    assert (result.served, result.attempts) == (healthy, 3)
    assert [(billed.model, billed.attempt) for billed in result.billed_failures] == [(malformed, 1), (malformed, 2)]
    assert all(isinstance(billed.error, upstream.UpstreamInvalidResponse) for billed in result.billed_failures)


def test_falls_back_on_timeout(mock_upstream):
    stalled = openai_model(mock_upstream, "mock-stall", timeout=0.3)
    healthy = openai_model(mock_upstream, "mock-small")

    result = fallbacks([stalled, healthy], policy=RetryPolicy(attempts_per_model=1, base_delay_seconds=0.01))

    assert (result.served, result.attempts) == (healthy, 2)
    # The provider had the request when it went quiet: it may bill the prompt.
    [billed] = result.billed_failures
    assert (billed.model, billed.attempt, type(billed.error)) == (stalled, 1, upstream.UpstreamTimeout)


def test_falls_back_on_connection_error(mock_upstream):
    unreachable = openai_model(mock_upstream, "mock-small", base_url=f"http://127.0.0.1:{free_port()}/v1")
    healthy = openai_model(mock_upstream, "mock-small")

    result = fallbacks([unreachable, healthy])

    assert (result.served, result.attempts) == (healthy, 3)
    assert result.billed_failures == ()  # nothing reached a provider


def test_a_bad_request_is_not_retried_nor_sent_down_the_chain(mock_upstream):
    rejected, healthy = openai_model(mock_upstream, "mock-fail-400"), openai_model(mock_upstream, "mock-small")

    with pytest.raises(upstream.UpstreamRejected) as excinfo:
        fallbacks([rejected, healthy])

    assert excinfo.value.upstream_status == 400 and excinfo.value.attempts == 1


def test_exhausted_chain_raises_the_last_error_with_the_attempts(mock_upstream):
    chain = [openai_model(mock_upstream, "mock-fail-503"), openai_model(mock_upstream, "mock-fail-502")]

    with pytest.raises(upstream.UpstreamRejected) as excinfo:
        fallbacks(chain)

    assert excinfo.value.upstream_status == 502 and excinfo.value.attempts == 4
    assert excinfo.value.last_model == chain[1]


def test_attempts_are_bounded_across_the_chain(mock_upstream):
    chain = [openai_model(mock_upstream, "mock-fail-503") for _ in range(5)]

    with pytest.raises(upstream.UpstreamRejected) as excinfo:
        fallbacks(chain, policy=RetryPolicy(attempts_per_model=2, max_attempts=3, base_delay_seconds=0.01))

    assert excinfo.value.attempts == 3


def test_total_deadline_cuts_a_slow_attempt(mock_upstream):
    stalled = openai_model(mock_upstream, "mock-stall", timeout=5.0)
    started = time.monotonic()

    with pytest.raises(upstream.UpstreamTimeout) as excinfo:
        fallbacks([stalled], policy=RetryPolicy(deadline_seconds=0.3))

    assert "deadline" in excinfo.value.message and excinfo.value.attempts == 1
    assert time.monotonic() - started < 4  # well under the provider's own 5s timeout
    assert excinfo.value.billed_failures == (BilledFailure(stalled, excinfo.value, 1),)


def test_an_exhausted_chain_raises_its_last_error_with_every_billed_failure(mock_upstream):
    malformed, failing = (
        openai_model(mock_upstream, "mock-malformed-body-array"),
        openai_model(mock_upstream, "mock-fail-503"),
    )

    with pytest.raises(upstream.UpstreamRejected) as excinfo:
        fallbacks([malformed, failing])

    assert excinfo.value.attempts == 4
    assert [(billed.model, billed.attempt) for billed in excinfo.value.billed_failures] == [
        (malformed, 1),
        (malformed, 2),
    ]


def test_a_call_cancelled_during_a_later_attempt_has_handed_over_the_failures_billed_before_it(mock_upstream):
    """The caller's list gets each billed failure as it happens: a cancel (the client went away) raises neither the
    result nor the error that carry them."""
    malformed = openai_model(mock_upstream, "mock-malformed-usage-text")
    stalled = openai_model(mock_upstream, "mock-stall", timeout=5.0)
    billed: list[BilledFailure] = []

    async def scenario():
        call = asyncio.ensure_future(
            call_with_fallbacks(
                [malformed, stalled],
                complete,
                policy=RetryPolicy(attempts_per_model=1, base_delay_seconds=0.01),
                breaker_policy=NEVER_OPENS,
                billed_to=billed,
            )
        )
        while not billed:  # the first answer comes back unusable
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)  # the second model is stalling
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call

    run(scenario())

    [failure] = billed
    assert (failure.model, failure.attempt, type(failure.error)) == (malformed, 1, upstream.UpstreamInvalidResponse)


def test_a_call_cancelled_during_a_backoff_has_handed_over_the_failure_before_it(mock_upstream, monkeypatch):
    malformed = openai_model(mock_upstream, "mock-malformed-body-array")
    billed: list[BilledFailure] = []
    monkeypatch.setattr("routing.resilience.backoff_delay", lambda *args: 5.0)  # within FAST's deadline

    async def scenario():
        call = asyncio.ensure_future(
            call_with_fallbacks([malformed], complete, policy=FAST, breaker_policy=NEVER_OPENS, billed_to=billed)
        )
        while not billed:
            await asyncio.sleep(0.01)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call

    run(scenario())

    assert [(failure.model, failure.attempt) for failure in billed] == [(malformed, 1)]


def test_progress_tells_an_attempt_under_way_from_a_backoff_after_a_billed_one(mock_upstream, monkeypatch):
    """A caller cancelled mid-chain knows whether an attempt was under way (its prompt not among the billed failures)
    or none was (a backoff after a failure): in flight while the request is out, cleared once it failed."""
    stalled = openai_model(mock_upstream, "mock-stall", timeout=0.3)
    billed: list[BilledFailure] = []
    progress = ChainProgress()
    monkeypatch.setattr("routing.resilience.backoff_delay", lambda *args: 5.0)  # within FAST's deadline

    async def scenario():
        call = asyncio.ensure_future(
            call_with_fallbacks(
                [stalled], complete, policy=FAST, breaker_policy=NEVER_OPENS, billed_to=billed, progress=progress
            )
        )
        await asyncio.sleep(0.1)  # the first attempt is out, stalling
        under_way = (progress.in_flight, progress.attempts, list(billed))
        while not billed:  # it times out once sent: billed, then the backoff
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        between = (progress.in_flight, progress.attempts)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        return under_way, between

    under_way, between = run(scenario())

    assert under_way == (stalled, 1, [])
    assert between == (None, 1)
    [failure] = billed
    assert (failure.model, failure.attempt, type(failure.error)) == (stalled, 1, upstream.UpstreamTimeout)


def test_progress_keeps_the_attempt_that_answered(mock_upstream):
    healthy = openai_model(mock_upstream, "mock-small")
    progress = ChainProgress()

    result = run(call_with_fallbacks([healthy], complete, policy=FAST, breaker_policy=NEVER_OPENS, progress=progress))

    assert result.served == healthy and (progress.in_flight, progress.attempts) == (healthy, 1)


def test_retry_waits_as_long_as_retry_after_asks(anthropic_server, anthropic_provider):
    anthropic_server.app.failures.append((429, {"retry-after": "0.4"}))
    claude = model_entry("claude", anthropic_provider, "claude-test")

    result = fallbacks([claude])

    assert (result.served, result.attempts) == (claude, 2)
    first, second = anthropic_server.app.arrivals
    assert second - first >= 0.4


def test_retry_after_longer_than_the_policy_allows_moves_to_the_next_model(
    anthropic_server, anthropic_provider, mock_upstream
):
    anthropic_server.app.failures.append((529, {"retry-after": "30"}))
    claude = model_entry("claude", anthropic_provider, "claude-test")
    healthy = openai_model(mock_upstream, "mock-small")
    started = time.monotonic()

    result = fallbacks([claude, healthy], policy=RetryPolicy(max_retry_after_seconds=1, base_delay_seconds=0.01))

    assert (result.served, result.attempts) == (healthy, 2)
    assert time.monotonic() - started < 5


def test_retry_after_as_http_date_and_milliseconds():
    in_two_minutes = format_datetime(datetime.now(UTC) + timedelta(minutes=2), usegmt=True)

    assert 100 < parse_retry_after({"retry-after": in_two_minutes}) <= 120
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0
    assert parse_retry_after({"retry-after": "3"}) == 3.0
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "3"}) == 0.25
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None


def test_stream_falls_back_when_the_first_provider_fails_before_the_first_byte(anthropic_provider, mock_upstream):
    overloaded = model_entry("claude", anthropic_provider, "claude-stream-overloaded")
    healthy = openai_model(mock_upstream, "mock-small")

    def open_stream(entry):
        body = {**BODY, "model": entry.upstream_name, "stream": True, "stream_options": {"include_usage": True}}
        return upstream.open_chat_stream(entry.provider, body)

    async def scenario():
        result = await call_with_fallbacks([overloaded, healthy], open_stream, policy=FAST, breaker_policy=NEVER_OPENS)
        return result, await collect_stream(result.value)

    result, events = run(scenario())

    assert (result.served, result.attempts) == (healthy, 3)
    assert streamed_text(chunks_of(events)).startswith("Mock answer")


def test_breaker_opens_and_a_dead_provider_is_skipped(mock_upstream):
    dead = openai_model(mock_upstream, "mock-small", base_url=f"http://127.0.0.1:{free_port()}/v1")
    healthy = openai_model(mock_upstream, "mock-small")
    breaker_policy = BreakerPolicy(failure_threshold=2, window_seconds=10, cooldown_seconds=30)

    first = fallbacks([dead, healthy], breaker_policy=breaker_policy)
    second = fallbacks([dead, healthy], breaker_policy=breaker_policy)

    assert (first.served, first.attempts) == (healthy, 3)
    assert (second.served, second.attempts) == (healthy, 1)


def test_every_provider_open_raises_circuit_open(mock_upstream):
    dead = openai_model(mock_upstream, "mock-fail-503")
    breaker_policy = BreakerPolicy(failure_threshold=2, cooldown_seconds=30)
    with pytest.raises(upstream.UpstreamRejected):
        fallbacks([dead], breaker_policy=breaker_policy)

    with pytest.raises(CircuitOpen) as excinfo:
        fallbacks([dead], breaker_policy=breaker_policy)

    assert excinfo.value.attempts == 0 and dead.provider.name in excinfo.value.message


def breaker_scenario(policy: BreakerPolicy):
    """Trip a breaker, check it in two instances (as two processes would), then walk it through half-open."""
    name = unique("provider")

    async def scenario():
        one, other = (
            CircuitBreaker(name, "mock-small", policy=policy),
            CircuitBreaker(name, "mock-small", policy=policy),
        )
        seen = {}
        await one.record_failure()
        seen["after_one_failure"] = await other.allow()
        await other.record_failure()
        seen["after_threshold"] = (await one.allow(), await other.allow())
        await asyncio.sleep(policy.cooldown_seconds + 0.05)
        seen["half_open"] = (await one.allow(), await other.allow())
        await one.record_failure()  # the probe failed: open again at once
        seen["probe_failed"] = await other.allow()
        await asyncio.sleep(policy.cooldown_seconds + 0.05)
        seen["second_probe"] = await other.allow()
        await other.record_success()
        seen["closed_again"] = (await one.allow(), await other.allow(), await one.allow())
        await one.record_failure()
        seen["one_failure_after_recovery"] = await other.allow()
        return seen

    return run(scenario())


EXPECTED_BREAKER_WALK = {
    "after_one_failure": True,
    "after_threshold": (False, False),
    "half_open": (True, False),  # only one probe goes through
    "probe_failed": False,
    "second_probe": True,
    "closed_again": (True, True, True),
    "one_failure_after_recovery": True,
}


def test_breaker_state_is_shared_through_redis(settings):
    assert settings.REDIS_URL, "run with TEST_REDIS_URL so the breaker state goes through Redis"

    walk = breaker_scenario(BreakerPolicy(failure_threshold=2, window_seconds=10, cooldown_seconds=0.3))

    assert walk == EXPECTED_BREAKER_WALK


def test_breaker_without_redis_keeps_the_same_behaviour_in_process(settings):
    settings.REDIS_URL = ""

    walk = breaker_scenario(BreakerPolicy(failure_threshold=2, window_seconds=10, cooldown_seconds=0.3))

    assert walk == EXPECTED_BREAKER_WALK


def test_failures_spread_beyond_the_window_do_not_open_the_breaker():
    name = unique("provider")
    policy = BreakerPolicy(failure_threshold=2, window_seconds=0.2, cooldown_seconds=30)

    async def scenario():
        breaker = CircuitBreaker(name, "mock-small", policy=policy)
        await breaker.record_failure()
        await asyncio.sleep(0.3)
        await breaker.record_failure()
        return await breaker.allow()

    assert run(scenario()) is True


def test_a_success_clears_the_failures_counted_since_a_clean_allow(settings):
    """A clean allow lets a success skip clearing; a failure in between must still be cleared by the success."""
    assert settings.REDIS_URL, "run with TEST_REDIS_URL so the breaker state goes through Redis"
    name = unique("provider")
    policy = BreakerPolicy(failure_threshold=2, window_seconds=10, cooldown_seconds=30)

    async def scenario():
        breaker, other = (
            CircuitBreaker(name, "mock-small", policy=policy),
            CircuitBreaker(name, "mock-small", policy=policy),
        )
        assert await breaker.allow()
        await breaker.record_failure()
        await breaker.record_success()
        await other.record_failure()
        return await other.allow()

    assert run(scenario()) is True


def test_a_circuit_opened_by_another_process_is_honoured_within_the_clean_verdict_time(settings):
    assert settings.REDIS_URL, "run with TEST_REDIS_URL so the breaker state goes through Redis"
    name = unique("provider")
    policy = BreakerPolicy(failure_threshold=1, window_seconds=10, cooldown_seconds=30)

    async def scenario():
        here = CircuitBreaker(name, "mock-small", policy=policy)
        first = await here.allow()
        # Another process trips the circuit: here only Redis says so.
        await async_redis().set(here.keys[1], "1", px=30_000)
        trusted = await here.allow()
        await asyncio.sleep(CLEAN_VERDICT_SECONDS + 0.05)
        return first, trusted, await here.allow()

    assert run(scenario()) == (True, True, False)


def test_one_failing_model_opens_only_its_own_circuit_and_the_providers_other_models_keep_answering(mock_upstream):
    """Issue 15: the circuit was the provider's, so one model's failures (another tenant's traffic) took down the
    provider's healthy models with it."""
    provider = provider_entry("openai", f"{mock_upstream.url}/v1", name=unique("shared"))
    failing = model_entry(unique("failing"), provider, "mock-fail-503")
    healthy = model_entry(unique("healthy"), provider, "mock-small")
    breaker_policy = BreakerPolicy(failure_threshold=2, window_seconds=10, cooldown_seconds=30)
    with pytest.raises(upstream.UpstreamRejected):
        fallbacks([failing], breaker_policy=breaker_policy)

    with pytest.raises(CircuitOpen):
        fallbacks([failing], breaker_policy=breaker_policy)
    served = fallbacks([healthy], breaker_policy=breaker_policy)

    assert (served.served, served.attempts) == (healthy, 1)
