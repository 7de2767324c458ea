from datetime import UTC, datetime, timedelta

import pytest
from django.core.exceptions import ValidationError

from billing.budgets.index import build_rate_limit_index
from billing.ratelimits import RATE_LIMIT_SCRIPT, rate_limit_check, rate_limit_create
from tests.loops import run

# 45 s into a minute: the window resets in 15 s.
NOW = datetime(2026, 11, 27, 12, 30, 45, tzinfo=UTC)


async def check_many(limits, *, key, count: int, tokens: int, now):
    return [
        await rate_limit_check(limits=limits, key_id=key.pk, team_id=key.team_id, tokens=tokens, now=now)
        for _ in range(count)
    ]


def checks(org, *, key=None, count: int, tokens: int = 10, now=NOW):
    limits = build_rate_limit_index(tenant_id=org.tenant.pk)
    return run(check_many(limits, key=key or org.api_key, count=count, tokens=tokens, now=now))


@pytest.mark.parametrize("backend", ["redis", "in-process"])
def test_requests_per_minute_with_openai_headers(org, backend, settings, redis_counters):
    if backend == "in-process":
        settings.REDIS_URL = ""
    rate_limit_create(tenant=org.tenant, api_key=org.api_key, requests_per_minute=3, tokens_per_minute=1000)
    results = checks(org, count=4, tokens=100)
    assert [result.allowed for result in results] == [True, True, True, False]
    assert results[0].headers == {
        "x-ratelimit-limit-requests": "3",
        "x-ratelimit-remaining-requests": "2",
        "x-ratelimit-reset-requests": "15s",
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "900",
        "x-ratelimit-reset-tokens": "15s",
    }
    refused = results[-1]
    assert refused.retry_after_seconds == 15
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert refused.headers["x-ratelimit-remaining-tokens"] == "700"  # a refused request is not counted
    # The next minute starts afresh.
    assert checks(org, count=1, now=NOW + timedelta(seconds=15))[0].allowed


def test_tokens_per_minute_refuses_what_would_not_fit(org, redis_counters):
    rate_limit_create(tenant=org.tenant, api_key=org.api_key, tokens_per_minute=250)
    results = checks(org, count=3, tokens=100)
    assert [result.allowed for result in results] == [True, True, False]
    assert "x-ratelimit-limit-requests" not in results[0].headers
    assert results[2].headers["x-ratelimit-remaining-tokens"] == "50"


def test_a_team_limit_is_shared_by_its_keys_and_the_tightest_limit_answers(org, redis_counters):
    from tenants.services import api_key_create

    second_key, _ = api_key_create(team=org.team, name="second")
    rate_limit_create(tenant=org.tenant, team=org.team, requests_per_minute=3)
    rate_limit_create(tenant=org.tenant, api_key=org.api_key, requests_per_minute=10)
    first = checks(org, count=2)
    assert first[1].headers["x-ratelimit-limit-requests"] == "3"  # the team's, the tighter one
    assert [result.allowed for result in checks(org, key=second_key, count=2)] == [True, False]
    # Another team is not affected.
    assert checks(org, key=org.other_key, count=1)[0].allowed


def test_unlimited_without_a_rate_limit(org, redis_counters):
    [result] = checks(org, count=1)
    assert result.allowed and result.headers == {}


def test_a_rate_limit_needs_one_target_and_a_limit(org):
    with pytest.raises(ValidationError):
        rate_limit_create(tenant=org.tenant, team=org.team, api_key=org.api_key, requests_per_minute=1)
    with pytest.raises(ValidationError):
        rate_limit_create(tenant=org.tenant, team=org.team)


def test_counting_goes_on_after_redis_forgets_its_scripts(org, redis_counters):
    """The scripts run by SHA1; a Redis that restarted (SCRIPT FLUSH here) is sent the source again."""
    rate_limit_create(tenant=org.tenant, api_key=org.api_key, requests_per_minute=2)
    assert checks(org, count=1)[0].allowed
    redis_counters.script_flush()

    assert [result.allowed for result in checks(org, count=2)] == [True, False]
    assert redis_counters.script_exists(RATE_LIMIT_SCRIPT.sha) == [True]


@pytest.mark.parametrize("backend", ["redis", "in-process"])
def test_a_request_counted_already_counts_its_tokens_only(org, backend, settings, redis_counters):
    """Counted before its compression summary, a request's own tokens are counted at admission without counting it
    against requests per minute again, which its limit (reached by then) does not refuse."""
    if backend == "in-process":
        settings.REDIS_URL = ""
    rate_limit_create(tenant=org.tenant, api_key=org.api_key, requests_per_minute=1, tokens_per_minute=1000)
    limits = build_rate_limit_index(tenant_id=org.tenant.pk)

    async def counted_twice():
        check = {"limits": limits, "key_id": org.api_key.pk, "team_id": org.team.pk, "now": NOW}
        return [
            await rate_limit_check(**check, tokens=300),
            await rate_limit_check(**check, tokens=600, requests=0),
            await rate_limit_check(**check, tokens=200, requests=0),
        ]

    summary, request, over = run(counted_twice())

    assert (summary.allowed, request.allowed, over.allowed) == (True, True, False)
    assert request.headers["x-ratelimit-remaining-requests"] == "0"
    assert request.headers["x-ratelimit-remaining-tokens"] == "100"
    assert over.refused_by == "your key"
