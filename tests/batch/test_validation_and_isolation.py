"""Bad input rejected at validation with per-line errors and nothing run; another tenant's ids answer 404."""

import io
import socket
from decimal import Decimal

import httpx
import openai
import orjson
import pytest
from django.core.files.uploadedfile import UploadedFile
from openai import OpenAI

from billing.budgets.services import budget_create
from billing.models import UsageRecord
from llmops.gateway.batches.models import BatchLine, Job
from llmops.gateway.batches.runner import batch_process
from llmops.gateway.batches.services import UPLOAD_OVERHEAD_BYTES
from llmops.gateway.batches.views import UploadParser
from routing.services import tenant_model_access_set
from tests.batch.conftest import chat_line, jsonl
from tests.batch.test_batches_live import rows, upload, wait_finished
from tests.factories import ModelFactory
from tests.loops import run as run_on_a_new_loop

pytestmark = pytest.mark.live


def test_invalid_lines_fail_validation_with_line_numbers_and_run_nothing(worker, openai_client, acme):
    lines = [
        chat_line("fine", "acme-small"),
        b"{not json",
        {**chat_line("other-endpoint", "acme-small"), "url": "/v1/embeddings"},
        chat_line("fine", "acme-small"),
        {**chat_line("no-messages", "acme-small"), "body": {"model": "acme-small"}},
    ]
    batch = openai_client.batches.create(
        input_file_id=upload(openai_client, lines), endpoint="/v1/chat/completions", completion_window="24h"
    )

    done = wait_finished(openai_client, batch.id)

    assert done.status == "failed" and done.failed_at
    assert [(error.line, error.code) for error in done.errors.data] == [
        (2, "invalid_json_line"),
        (3, "mismatched_endpoint"),
        (4, "duplicate_custom_id"),
        (5, "missing_required_parameter"),
    ]
    assert [row["line"] for row in rows(openai_client, done.error_file_id)] == [2, 3, 4, 5]
    assert done.output_file_id is None
    assert not BatchLine.objects.unscoped().filter(batch_id=batch.id).exists()
    assert not UsageRecord.objects.unscoped().filter(tenant=acme.tenant).exists()


def test_a_byte_order_mark_before_the_first_line_is_not_part_of_it(worker, openai_client, acme):
    first = b"\xef\xbb\xbf" + orjson.dumps(chat_line("first", "acme-small"))
    batch = openai_client.batches.create(
        input_file_id=upload(openai_client, [first, chat_line("second", "acme-small")]),
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )

    done = wait_finished(openai_client, batch.id)

    assert (done.status, done.request_counts.completed, done.request_counts.failed) == ("completed", 2, 0)


def test_batch_over_the_budget_is_refused_before_anything_runs(worker, openai_client, acme):
    budget_create(tenant=acme.tenant, limit_usd=Decimal("0.001"))
    # Worst case of each line: 4,096 answer tokens at 0.60 USD per million, about 0.0025 USD: over the budget.
    batch = openai_client.batches.create(
        input_file_id=upload(openai_client, [chat_line("a", "acme-small"), chat_line("b", "acme-small")]),
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )

    done = wait_finished(openai_client, batch.id)

    assert done.status == "failed"
    assert [error.code for error in done.errors.data] == ["budget_exceeded"]
    assert not UsageRecord.objects.unscoped().filter(tenant=acme.tenant).exists()


def test_a_batch_whose_images_its_budget_cannot_hold_is_refused_before_anything_runs(worker, openai_client, acme):
    budget_create(tenant=acme.tenant, limit_usd=Decimal("0.01"))
    image = {"type": "image_url", "image_url": {"url": "https://example.com/chart.png"}}
    looked_at = [{"role": "user", "content": [{"type": "text", "text": "Describe it."}, image]}]
    # As text, two lines' worst case (about 0.0025 USD each) fits; the catalog knows no image bound for the mock's
    # model, so each image line is reserved at its 128,000-token context window: about 0.019 USD.
    lines = [chat_line(name, "acme-small", messages=looked_at) for name in ("a", "b")]
    batch = openai_client.batches.create(
        input_file_id=upload(openai_client, lines), endpoint="/v1/chat/completions", completion_window="24h"
    )

    done = wait_finished(openai_client, batch.id)

    assert done.status == "failed"
    assert [error.code for error in done.errors.data] == ["budget_exceeded"]
    assert not UsageRecord.objects.unscoped().filter(tenant=acme.tenant).exists()


def test_an_alias_line_is_checked_at_the_allowed_model_whose_worst_case_for_it_is_largest(worker, openai_client, acme):
    """acme-large has the dearest list price, but acme-wide, with no image rule and a million-token window, reserves
    its whole window for an image: about 1 USD, against acme-large's 0.32."""
    wide = ModelFactory(
        name="acme-wide",
        provider=acme.small.provider,
        upstream_name="mock-wide",
        input_price_per_million=Decimal("1.00"),
        cached_input_price_per_million=Decimal("0.50"),
        output_price_per_million=Decimal("0.50"),
        context_window=1_000_000,
    )
    tenant_model_access_set(tenant=acme.tenant, allowed_models=[acme.small, acme.large, wide], default_model=acme.small)
    budget_create(tenant=acme.tenant, limit_usd=Decimal("0.50"))
    image = {"type": "image_url", "image_url": {"url": "https://example.com/chart.png"}}
    looked_at = [{"role": "user", "content": [{"type": "text", "text": "Describe it."}, image]}]
    batch = openai_client.batches.create(
        input_file_id=upload(openai_client, [chat_line("a", "default", messages=looked_at, max_tokens=10)]),
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )

    done = wait_finished(openai_client, batch.id)

    assert done.status == "failed"
    [error] = done.errors.data
    assert error.code == "budget_exceeded" and error.message.startswith("The batch could cost up to 1.0000")


def test_upload_refusals(live_broker, files_root, openai_client, settings):
    settings.LLMOPS_FILES_MAX_BYTES = 100
    big = jsonl([chat_line(f"line-{n}", "acme-small") for n in range(5)])

    with pytest.raises(openai.APIStatusError) as too_large:
        openai_client.files.create(file=("big.jsonl", io.BytesIO(big)), purpose="batch")
    with pytest.raises(openai.BadRequestError) as wrong_purpose:
        openai_client.files.create(file=("a.jsonl", io.BytesIO(b"{}\n")), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError) as wrong_window:
        file_id = openai_client.files.create(file=("a.jsonl", io.BytesIO(b"{}\n")), purpose="batch").id
        openai_client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="1h")

    assert (too_large.value.status_code, too_large.value.code) == (413, "file_too_large")
    assert wrong_purpose.value.param == "purpose"
    assert wrong_window.value.param == "completion_window"


def never_read(*args, **kwargs):
    raise AssertionError("the content of an upload over the limit was read")


def test_an_upload_over_the_limit_is_refused_from_its_size_before_its_content_is_read(
    live_broker, files_root, openai_client, settings, monkeypatch
):
    settings.LLMOPS_FILES_MAX_BYTES = 100
    monkeypatch.setattr(UploadedFile, "read", never_read)
    big = jsonl([chat_line(f"line-{n}", "acme-small") for n in range(5)])

    with pytest.raises(openai.APIStatusError) as too_large:
        openai_client.files.create(file=("big.jsonl", io.BytesIO(big)), purpose="batch")

    assert (too_large.value.status_code, too_large.value.code) == (413, "file_too_large")
    assert too_large.value.body["message"] == f"The file is {len(big)} bytes; the limit is 100 bytes."


def test_a_request_body_far_over_the_file_limit_is_refused_before_it_is_parsed(
    live_broker, files_root, openai_client, settings, monkeypatch
):
    """Its Content-Length tells it: no part of it is parsed (nor spooled to disk by the parser)."""
    settings.LLMOPS_FILES_MAX_BYTES = 100
    monkeypatch.setattr(UploadParser, "parse", never_read)
    big = b"x" * (100 + UPLOAD_OVERHEAD_BYTES + 1)

    with pytest.raises(openai.APIStatusError) as too_large:
        openai_client.files.create(file=("big.jsonl", io.BytesIO(big)), purpose="batch")

    assert (too_large.value.status_code, too_large.value.code) == (413, "file_too_large")
    assert not list(files_root.rglob("*.jsonl"))


def test_an_upload_declared_far_over_the_file_limit_is_answered_before_its_body_is_sent(
    live_broker, files_root, gateway, acme, settings
):
    """The handler answers from the Content-Length alone: a client that declares 10 GB and sends nothing yet gets its
    413 at once, where reading the body first would wait for all of it (and spool it to disk)."""
    settings.LLMOPS_FILES_MAX_BYTES = 100
    host, port = httpx.URL(gateway.url).host, httpx.URL(gateway.url).port
    head = (
        f"POST /v1/files HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {acme.key}\r\n"
        "Content-Type: multipart/form-data; boundary=x\r\nContent-Length: 10000000000\r\n\r\n"
    )
    with socket.create_connection((host, port), timeout=5) as client:
        client.sendall(head.encode())
        answer = b""
        # The answer is chunked; its last chunk ends it, and the server then closes a connection whose body it left.
        while not answer.endswith(b"\r\n0\r\n\r\n") and (chunk := client.recv(65536)):
            answer += chunk

    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b'"code":"file_too_large"' in answer
    assert not list(files_root.rglob("*"))


def test_files_and_batches_of_another_tenant_answer_404(live_broker, files_root, gateway, openai_client, acme, globex):
    file_id = upload(openai_client, [chat_line("a", "acme-small")])
    batch = openai_client.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    with OpenAI(base_url=f"{gateway.url}/v1", api_key=globex.key, max_retries=0) as intruder:
        calls = [
            lambda: intruder.files.retrieve(file_id),
            lambda: intruder.files.content(file_id),
            lambda: intruder.files.delete(file_id),
            lambda: intruder.batches.retrieve(batch.id),
            lambda: intruder.batches.cancel(batch.id),
            lambda: intruder.batches.create(
                input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
            ),
        ]
        for call in calls:
            with pytest.raises(openai.NotFoundError):
                call()
        assert intruder.files.list().data == [] and intruder.batches.list().data == []

    assert [f.id for f in openai_client.files.list().data] == [file_id]
    assert [b.id for b in openai_client.batches.list().data] == [batch.id]


def test_batches_list_pages_with_after_and_limit(live_broker, files_root, openai_client, acme):
    file_id = upload(openai_client, [chat_line("a", "acme-small")])
    created = [
        openai_client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h").id
        for _ in range(5)
    ]

    first = openai_client.batches.list(limit=2)
    second = openai_client.batches.list(limit=2, after=first.data[-1].id)
    every = [batch.id for batch in openai_client.batches.list(limit=2)]

    newest_first = list(reversed(created))
    assert [b.id for b in first.data] == newest_first[:2] and first.has_more
    assert [b.id for b in second.data] == newest_first[2:4]
    assert every == newest_first


def test_files_list_takes_a_limit_up_to_10000_and_batches_up_to_100(live_broker, files_root, openai_client, acme):
    created = [upload(openai_client, [chat_line(name, "acme-small")]) for name in "abc"]

    everything = openai_client.files.list(limit=10_000)
    first = openai_client.files.list(limit=2, order="asc")
    rest = openai_client.files.list(limit=10_000, order="asc", after=first.data[-1].id)
    batches = openai_client.batches.list(limit=100)
    refusals = [
        lambda: openai_client.files.list(limit=10_001),
        lambda: openai_client.batches.list(limit=101),
    ]
    refused = []
    for call in refusals:
        with pytest.raises(openai.BadRequestError) as error:
            call()
        refused.append((error.value.code, error.value.param, error.value.body["message"]))

    assert [f.id for f in everything.data] == list(reversed(created)) and not everything.has_more
    assert [f.id for f in first.data] == created[:2] and first.has_more
    assert [f.id for f in rest.data] == created[2:] and not rest.has_more
    assert batches.data == [] and not batches.has_more
    assert refused == [
        ("invalid_value", "limit", "limit must be between 1 and 10000."),
        ("invalid_value", "limit", "limit must be between 1 and 100."),
    ]


def test_deleted_file_is_gone_but_its_content_was_removed_too(live_broker, files_root, openai_client, acme):
    file_id = upload(openai_client, [chat_line("a", "acme-small")])

    deleted = openai_client.files.delete(file_id)

    assert deleted.deleted and deleted.id == file_id
    with pytest.raises(openai.NotFoundError):
        openai_client.files.retrieve(file_id)
    assert not any(files_root.rglob(f"{file_id}*"))


def test_what_the_database_could_not_give_back_is_refused_by_name(live_broker, files_root, gateway, acme):
    """PostgreSQL's text and jsonb hold no NUL, and jsonb gives 1e21 back as an integer no JSON encoder takes: a job
    body, batch metadata or a batch line with either is refused (by line for a batch) rather than failing later."""
    headers = {"Authorization": f"Bearer {acme.key}"}
    job = {"model": "acme-small", "messages": [{"role": "user", "content": "a\x00b"}]}
    with httpx.Client(base_url=gateway.url, headers=headers) as client:
        refused_job = client.post("/api/jobs", json=job)
        huge_job = client.post("/api/jobs", json={**job, "messages": [{"role": "user", "content": "hi"}], "x": 1e21})
        nul_ids = [client.get(path).status_code for path in ("/v1/files/a%00", "/v1/batches/a%00", "/api/jobs/a%00")]
        lines = [chat_line("fine", "acme-small"), chat_line("nul", "acme-small", text="a\x00b")]
        uploaded = client.post("/v1/files", files={"file": ("b.jsonl", jsonl(lines))}, data={"purpose": "batch"})
        create = {
            "input_file_id": uploaded.json()["id"],
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
        }
        refused_metadata = client.post("/v1/batches", json={**create, "metadata": {"run": "a\x00"}})
        batch_id = client.post("/v1/batches", json=create).json()["id"]
        run_on_a_new_loop(batch_process(batch_id))
        batch = client.get(f"/v1/batches/{batch_id}").json()

    assert (refused_job.status_code, refused_job.json()["error"]["param"]) == (400, "messages[0].content")
    assert (huge_job.status_code, huge_job.json()["error"]["param"]) == (400, "x")
    assert nul_ids == [404, 404, 404]
    assert (refused_metadata.status_code, refused_metadata.json()["error"]["param"]) == (400, "metadata.run")
    assert batch["status"] == "failed"
    assert [(e["line"], e["code"], e["param"]) for e in batch["errors"]["data"]] == [
        (2, "invalid_value", "body.messages[0].content")
    ]
    assert not Job.objects.unscoped().exists() and not UsageRecord.objects.unscoped().exists()


# About 1,800 tokens, billed as prompt: 0.00027 USD at acme-small's 0.15 USD per million input tokens.
DEFINITION = "Look the order up by its number and tell when it ships. " * 150


@pytest.mark.parametrize(
    "definitions",
    [
        {"tools": [{"type": "function", "function": {"name": "lookup", "description": DEFINITION}}]},
        {"response_format": {"type": "json_schema", "json_schema": {"name": "order", "description": DEFINITION}}},
    ],
    ids=["tools", "response_format"],
)
def test_a_line_s_definitions_count_in_the_batch_s_worst_case(
    live_broker, files_root, openai_client, acme, definitions
):
    """Without them the line's worst case (a short message, 10 answer tokens) is about 0.000008 USD, well within the
    budget; the provider bills the definitions as prompt, and the budget cannot hold that."""
    budget_create(tenant=acme.tenant, limit_usd=Decimal("0.0001"))
    line = chat_line("a", "acme-small", max_tokens=10, **definitions)
    batch = openai_client.batches.create(
        input_file_id=upload(openai_client, [line]), endpoint="/v1/chat/completions", completion_window="24h"
    )

    run_on_a_new_loop(batch_process(batch.id))

    done = openai_client.batches.retrieve(batch.id)
    assert done.status == "failed"
    assert [error.code for error in done.errors.data] == ["budget_exceeded"]
