"""Rate limits count what reaches a provider: an answer from the cache calls none and is not counted."""

from billing.ratelimits import rate_limit_create
from tests.cache.conftest import chat


def test_cache_hits_are_not_counted_by_a_request_rate_limit(gateway, acme_caching, mock_upstream):
    rate_limit_create(tenant=acme_caching.tenant, api_key=acme_caching.api_key, requests_per_minute=2)
    served_before = mock_upstream.app.requests_served

    repeated = [chat(gateway, acme_caching, "What is our refund window for annual plans?") for _ in range(4)]
    second = chat(gateway, acme_caching, "Which regions do we ship to?")
    third = chat(gateway, acme_caching, "Who signs off a refund above 500 dollars?")

    assert [r.headers["x-llmops-cache"] for r in repeated] == ["miss", "hit-exact", "hit-exact", "hit-exact"]
    assert [r.status_code for r in repeated] == [200] * 4
    assert second.status_code == 200 and second.headers["x-ratelimit-remaining-requests"] == "0"
    assert third.status_code == 429 and third.json()["error"]["code"] == "rate_limit_exceeded"
    assert mock_upstream.app.requests_served - served_before == 2
