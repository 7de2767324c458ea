"""/api/schema/ under concurrent first requests: drf-spectacular builds the schema with module-level state that is not
thread-safe, and Django runs each sync view of an ASGI worker on a thread of its own."""

import asyncio

import httpx
import pytest

from tests.servers import free_port

pytestmark = pytest.mark.django_db(transaction=True)

CONCURRENT_FIRST_REQUESTS = 24


def test_concurrent_first_schema_requests_all_get_the_schema(spawn):
    gateway, _ = spawn
    port = free_port()
    gateway(port).start()

    async def fetch_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            requests = [client.get("/api/schema/", params={"format": "json"}) for _ in range(CONCURRENT_FIRST_REQUESTS)]
            return await asyncio.gather(*requests)

    responses = asyncio.run(fetch_all())

    assert [response.status_code for response in responses] == [200] * CONCURRENT_FIRST_REQUESTS
    assert all(response.json()["openapi"].startswith("3.") for response in responses)
