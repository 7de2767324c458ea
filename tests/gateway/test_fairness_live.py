"""One tenant cannot hurt the others (issue 15): a huge prompt is refused before it costs CPU."""

import httpx

from billing.models import UsageRecord
from routing.services import routing_policy_ensure_default


def test_a_megabyte_prompt_over_the_cap_is_refused_uncounted_with_its_ledger_row(gateway, acme):
    routing_policy_ensure_default(tenant=acme.tenant)
    body = {"model": "auto", "messages": [{"role": "user", "content": "refund policy " * 75_000}]}

    response = httpx.post(
        f"{gateway.url}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {acme.key}"}, timeout=60
    )

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "token_cap_exceeded" and "has at least" in error["message"]
    record = UsageRecord.objects.get(request_id=response.headers["x-llmops-request-id"])
    assert (record.http_status, record.error_code) == (400, "token_cap_exceeded")
