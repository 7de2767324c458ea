"""The CSV export over real HTTP through the ASGI app, the way uvicorn serves it in production."""

import csv
import io
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from django.conf import settings
from django.test import Client

from billing.models import UsageRecord
from tests.finance.conftest import make_finance_tenant, usage_row

pytestmark = [
    pytest.mark.live,
    # Django warns, then reads the whole body into memory, when an ASGI response is given a sync iterator.
    pytest.mark.filterwarnings("error:StreamingHttpResponse must consume synchronous iterators"),
]


def session_cookie(user) -> dict[str, str]:
    client = Client()
    client.force_login(user)
    return {settings.SESSION_COOKIE_NAME: client.cookies[settings.SESSION_COOKIE_NAME].value}


def test_export_streams_in_chunks_over_asgi(gateway):
    acme = make_finance_tenant("acme-live")
    globex = make_finance_tenant("globex-live")
    start = datetime(2025, 3, 3, tzinfo=UTC)
    UsageRecord.objects.bulk_create(
        [usage_row(acme.keys[index % 2], created_at=start + timedelta(seconds=index)) for index in range(5000)]
        + [usage_row(globex.keys[0], created_at=start, cost="3")]
    )
    params = {"tenant": "acme-live", "since": "2025-03-01", "until": "2025-03-31"}
    chunks = []
    with httpx.Client(base_url=gateway.url, cookies=session_cookie(acme.finance_user), timeout=30) as client:
        with client.stream("GET", "/api/usage/export.csv", params=params) as response:
            assert response.status_code == 200
            assert "content-length" not in response.headers
            chunks = list(response.iter_raw())
        refused = client.get("/api/usage/export.csv", params={**params, "tenant": "globex-live"})
    rows = list(csv.DictReader(io.StringIO(b"".join(chunks).decode())))
    assert len(rows) == 5000
    assert len(chunks) > 1
    assert {row["cost_usd"] for row in rows} == {"0.0000100000"}
    assert refused.status_code == 404
