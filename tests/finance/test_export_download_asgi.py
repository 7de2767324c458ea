"""An async export's download through the ASGI application, as uvicorn serves it: the stored file is sent as it is
read, not read whole into the worker's memory first."""

import asyncio
from datetime import date

import pytest
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.test import Client

from billing.finance.exports import CHUNK_BYTES
from billing.models import ExportStatus, UsageExport
from llmops import asgi
from tests.asgi_requests import body_then_disconnect, http_scope
from tests.finance.conftest import make_finance_tenant
from tests.loops import run

SIZE = 8 * CHUNK_BYTES

pytestmark = [
    pytest.mark.django_db(transaction=True),
    # Django warns, then reads the whole body into memory, when an ASGI response is given a sync iterator.
    pytest.mark.filterwarnings("error:StreamingHttpResponse must consume synchronous iterators"),
]


@pytest.fixture
def stored_export(settings, tmp_path):
    settings.MEDIA_ROOT = str(tmp_path)
    acme = make_finance_tenant("acme-download")
    content = ContentFile(b"day,cost_usd\n" + b"x" * (SIZE - 13))
    name = default_storage.save("usage-exports/1/7-usage-acme-download-2025-01-01-2025-12-31.csv", content)
    export = UsageExport.objects.create(
        tenant=acme.tenant,
        requested_by=acme.finance_user,
        since=date(2025, 1, 1),
        until=date(2025, 12, 31),
        status=ExportStatus.DONE,
        file_name=name,
    )
    return acme, export


@pytest.fixture
def opened_files(monkeypatch) -> list:
    """The files the request opens from storage."""
    opened = []
    real_open = default_storage.open

    def noting_open(*args, **kwargs):
        opened.append(real_open(*args, **kwargs))
        return opened[-1]

    monkeypatch.setattr(default_storage, "open", noting_open)
    return opened


def asgi_get(path: str, user, opened_files: list) -> tuple[dict, list[tuple[int, bytes]]]:
    """GET ``path`` as ``user`` from the ASGI application: the response's start message, and each body message with
    how many bytes of the ``opened_files`` had been read when it was sent."""
    client = Client()
    client.force_login(user)
    cookie = f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"
    scope = {**http_scope(path, headers=[(b"cookie", cookie.encode())]), "method": "GET"}
    start, bodies = {}, []

    async def send(message):
        if message["type"] == "http.response.start":
            start.update(message)
        elif message.get("body"):
            bodies.append((sum(stored.tell() for stored in opened_files), message["body"]))

    run(asgi.application(scope, body_then_disconnect(b"", asyncio.Event()), send))
    return start, bodies


def test_a_large_async_export_is_sent_as_it_is_read(stored_export, opened_files):
    acme, export = stored_export

    start, bodies = asgi_get(f"/api/usage/exports/{export.pk}/download", acme.finance_user, opened_files)

    headers = dict(start["headers"])
    assert start["status"] == 200
    assert headers[b"Content-Type"] == b"text/csv; charset=utf-8"
    assert headers[b"Content-Disposition"] == b'attachment; filename="usage-acme-download-2025-01-01-2025-12-31.csv"'
    assert headers[b"Content-Length"] == str(SIZE).encode()
    body = b"".join(chunk for _, chunk in bodies)
    assert len(body) == SIZE and body.startswith(b"day,cost_usd\n")
    read_when_first_sent, _ = bodies[0]
    assert read_when_first_sent < SIZE, "the whole file was read before its first byte was sent"


def test_another_tenants_export_answers_404_over_asgi(stored_export, opened_files):
    _, export = stored_export
    globex = make_finance_tenant("globex-download")

    start, bodies = asgi_get(f"/api/usage/exports/{export.pk}/download", globex.finance_user, opened_files)

    assert start["status"] == 404
    assert b"day,cost_usd" not in b"".join(chunk for _, chunk in bodies)
