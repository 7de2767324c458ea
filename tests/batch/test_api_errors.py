"""What /v1/files and /v1/batches answer a client that gets something wrong, through the openai SDK: OpenAI's error
types and codes naming the field, and validation errors the error file repeats line by line."""

import io

import httpx
import openai
import orjson
import pytest

from llmops.gateway.batches.runner import batch_process
from tests.batch.conftest import chat_line, jsonl, rows, upload
from tests.loops import run as run_on_a_new_loop

pytestmark = pytest.mark.live

CHAT = "/v1/chat/completions"


def created_and_validated(client, lines: list):
    """A batch of these lines, run in this process as a worker would run it (validation refuses a bad file)."""
    batch = client.batches.create(input_file_id=upload(client, lines), endpoint=CHAT, completion_window="24h")
    run_on_a_new_loop(batch_process(batch.id))
    return client.batches.retrieve(batch.id)


def test_conflicts_are_invalid_request_errors(live_broker, files_root, openai_client, acme):
    """A 409 has OpenAI's type, so the SDK's ConflictError says what kind of error it is."""
    finished = created_and_validated(openai_client, [chat_line("only", "acme-small")])
    create = {"input_file_id": finished.input_file_id, "endpoint": CHAT, "completion_window": "24h"}
    headers = {"Idempotency-Key": "nightly"}
    openai_client.batches.create(**create, extra_headers=headers)

    with pytest.raises(openai.ConflictError) as not_cancellable:
        openai_client.batches.cancel(finished.id)
    with pytest.raises(openai.ConflictError) as reused:
        openai_client.batches.create(**create, metadata={"run": "another"}, extra_headers=headers)

    assert finished.status == "completed"
    assert (not_cancellable.value.code, reused.value.code) == ("batch_not_cancellable", "idempotency_key_reused")
    assert (not_cancellable.value.type, reused.value.type) == ("invalid_request_error", "invalid_request_error")


def test_error_file_rows_repeat_the_errors_with_the_lines_custom_id(live_broker, files_root, openai_client, acme):
    lines = [
        chat_line("fine", "acme-small"),
        chat_line("fine", "acme-small"),
        {**chat_line("x", "acme-small"), "custom_id": 5},
        {**chat_line("x", "acme-small"), "custom_id": ""},
        {key: value for key, value in chat_line("x", "acme-small").items() if key != "custom_id"},
        {**chat_line("no-messages", "acme-small"), "body": {"model": "acme-small"}},
        {**chat_line("get", "acme-small"), "method": "GET"},
    ]

    failed = created_and_validated(openai_client, lines)

    errors = [error.model_dump() for error in failed.errors.data]
    assert failed.status == "failed"
    assert [(error["line"], error["code"], error["param"]) for error in errors] == [
        (2, "duplicate_custom_id", "custom_id"),
        (3, "invalid_type", "custom_id"),
        (4, "invalid_value", "custom_id"),
        (5, "missing_required_parameter", "custom_id"),
        (6, "missing_required_parameter", "body.messages"),
        (7, "invalid_method", "method"),
    ]
    assert rows(openai_client, failed.error_file_id) == [
        {
            "id": None,
            "custom_id": custom_id,
            "line": error["line"],
            "response": None,
            "error": {"code": error["code"], "message": error["message"], "param": error["param"]},
        }
        for custom_id, error in zip(["fine", None, "", None, "no-messages", "get"], errors, strict=True)
    ]


def without(line: dict, field: str) -> dict:
    return {key: value for key, value in line.items() if key != field}


def test_a_lines_method_url_and_body_are_checked_as_its_custom_id_is(live_broker, files_root, openai_client, acme):
    """Missing or null is missing_required_parameter, the wrong JSON type invalid_type, each naming the field; a
    string of the wrong value keeps OpenAI's batch codes."""
    line = chat_line("x", "acme-small")
    cases = [
        (without(line, "method"), "missing_required_parameter", "method"),
        ({**line, "method": None}, "missing_required_parameter", "method"),
        ({**line, "method": 1}, "invalid_type", "method"),
        ({**line, "method": "GET"}, "invalid_method", "method"),
        (without(line, "url"), "missing_required_parameter", "url"),
        ({**line, "url": None}, "missing_required_parameter", "url"),
        ({**line, "url": 1}, "invalid_type", "url"),
        ({**line, "url": "/v1/embeddings"}, "mismatched_endpoint", "url"),
        (without(line, "body"), "missing_required_parameter", "body"),
        ({**line, "body": None}, "missing_required_parameter", "body"),
        ({**line, "body": ["model"]}, "invalid_type", "body"),
        ({**line, "body": "text"}, "invalid_type", "body"),
    ]
    lines = [{**bad, "custom_id": f"line-{number}"} for number, (bad, _, _) in enumerate(cases, start=1)]

    failed = created_and_validated(openai_client, lines)

    assert [(error.line, error.code, error.param) for error in failed.errors.data] == [
        (number, code, param) for number, (_, code, param) in enumerate(cases, start=1)
    ]
    errors = {error.line: error for error in failed.errors.data}
    assert errors[3].message == "Invalid type for 'method': expected a string, but got an integer instead."
    assert errors[6].message == "Missing required parameter: 'url'."
    assert errors[8].message == "The url '/v1/embeddings' does not match the batch's endpoint /v1/chat/completions."
    assert errors[11].message == "Invalid type for 'body': expected an object, but got an array instead."
    assert not any("None" in error.message for error in errors.values())


LINE_BREAKING = ["line\u2028separator", "paragraph\u2029separator", "next\x85line"]


def test_output_and_error_files_escape_what_str_splitlines_cuts_at(live_broker, files_root, openai_client, acme):
    """JSON allows U+2028, U+2029 and NEL raw inside strings, but a client reading a file with
    ``files.content(id).text.splitlines()`` would get each row cut in two."""
    completed = created_and_validated(
        openai_client, [chat_line(custom_id, "acme-small") for custom_id in LINE_BREAKING]
    )
    failed = created_and_validated(
        openai_client, [{**chat_line(custom_id, "acme-small"), "method": "GET"} for custom_id in LINE_BREAKING]
    )

    for file_id in (completed.output_file_id, failed.error_file_id):
        content = openai_client.files.content(file_id)
        assert not any(character.encode() in content.content for character in ("\u2028", "\u2029", "\x85"))
        assert all(escaped in content.content for escaped in (b"\\u2028", b"\\u2029", b"\\u0085"))
        assert [orjson.loads(row)["custom_id"] for row in content.text.splitlines()] == LINE_BREAKING


def test_a_file_over_the_line_limit_names_the_first_line_past_it(live_broker, files_root, openai_client, settings):
    settings.LLMOPS_BATCH_MAX_LINES = 2

    failed = created_and_validated(openai_client, [chat_line(f"line-{n}", "acme-small") for n in range(3)])

    assert [(error.code, error.line) for error in failed.errors.data] == [("too_many_lines", 3)]
    assert [(row["error"]["code"], row["line"]) for row in rows(openai_client, failed.error_file_id)] == [
        ("too_many_lines", 3)
    ]


def test_an_error_of_the_whole_file_has_no_line(live_broker, files_root, openai_client, acme):
    file_id = upload(openai_client, [chat_line("a", "acme-small")])
    batch = openai_client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h")
    openai_client.files.delete(file_id)

    run_on_a_new_loop(batch_process(batch.id))

    failed = openai_client.batches.retrieve(batch.id)
    assert [(error.code, error.line) for error in failed.errors.data] == [("file_not_found", None)]
    assert [(row["error"]["code"], row["line"]) for row in rows(openai_client, failed.error_file_id)] == [
        ("file_not_found", None)
    ]


@pytest.mark.parametrize("field", ["input_file_id", "endpoint", "completion_window"])
def test_a_create_field_of_the_wrong_type_is_named(live_broker, files_root, openai_client, acme, field):
    create = {"input_file_id": upload(openai_client, [chat_line("a", "acme-small")]), "endpoint": CHAT}
    create["completion_window"] = "24h"

    with pytest.raises(openai.BadRequestError) as wrong_type:
        openai_client.batches.create(**{**create, field: 5})
    with pytest.raises(openai.BadRequestError) as missing:
        openai_client.batches.create(**{**create, field: None})

    assert (wrong_type.value.code, wrong_type.value.param) == ("invalid_type", field)
    assert f"Invalid type for '{field}'" in wrong_type.value.message
    assert (missing.value.code, missing.value.param) == ("missing_required_parameter", field)


def test_an_upload_that_is_not_multipart_is_told_so(live_broker, files_root, gateway, openai_client, acme):
    with httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {acme.key}"}) as client:
        form = client.post("/v1/files", data={"purpose": "batch"})
        json_body = client.post("/v1/files", json={"purpose": "batch", "file": "batch.jsonl"})
    with pytest.raises(openai.BadRequestError) as long_name:
        openai_client.files.create(file=("a" * 2000 + ".jsonl", io.BytesIO(jsonl([{"a": 1}]))), purpose="batch")

    for response in (form, json_body):
        error = response.json()["error"]
        assert (response.status_code, error["code"], error["param"]) == (400, "missing_required_parameter", "file")
        assert "multipart/form-data" in error["message"]
    assert (long_name.value.code, long_name.value.param) == ("invalid_value", "file")
    assert "shorter filename" in long_name.value.message
    assert "JSON" not in long_name.value.message


def test_paging_after_an_unknown_id_names_after(live_broker, files_root, openai_client, acme):
    with pytest.raises(openai.NotFoundError) as batches:
        openai_client.batches.list(after="batch_nope")
    with pytest.raises(openai.NotFoundError) as files:
        openai_client.files.list(after="file-nope")

    assert (batches.value.code, batches.value.param) == ("not_found", "after")
    assert (files.value.code, files.value.param) == ("not_found", "after")


def test_refusals_use_the_documented_codes(live_broker, files_root, openai_client, acme):
    file_id = upload(openai_client, [chat_line("a", "acme-small")])
    create = {"input_file_id": file_id, "endpoint": CHAT, "completion_window": "24h"}
    output_file = created_and_validated(openai_client, [chat_line("a", "acme-small")]).output_file_id
    refusals = {
        "purpose": lambda: openai_client.files.create(file=("a.jsonl", io.BytesIO(b"{}\n")), purpose="fine-tune"),
        "endpoint": lambda: openai_client.batches.create(**{**create, "endpoint": "/v1/embeddings"}),
        "completion_window": lambda: openai_client.batches.create(**{**create, "completion_window": "1h"}),
        "input_file_id": lambda: openai_client.batches.create(**{**create, "input_file_id": output_file}),
        "Idempotency-Key": lambda: openai_client.batches.create(**create, extra_headers={"Idempotency-Key": "k" * 256}),
        "limit": lambda: openai_client.batches.list(limit=0),
        "order": lambda: openai_client.files.list(order="sideways"),
    }

    answered = {}
    for param, call in refusals.items():
        with pytest.raises(openai.BadRequestError) as refused:
            call()
        answered[param] = (refused.value.code, refused.value.param, refused.value.type)

    assert answered == {param: ("invalid_value", param, "invalid_request_error") for param in refusals}


def test_a_batch_shows_the_same_cost_when_created_and_retrieved(live_broker, files_root, openai_client, acme):
    file_id = upload(openai_client, [chat_line("a", "acme-small")])

    created = openai_client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h")
    retrieved = openai_client.batches.retrieve(created.id)

    assert created.model_extra["llmops"] == retrieved.model_extra["llmops"]
    assert created.model_extra["llmops"] == {"cost_usd": "0.0000000000", "saved_batch_usd": "0.0000000000"}


def test_a_line_separator_inside_a_string_does_not_split_the_line(live_broker, files_root, openai_client, acme):
    """JSONL lines end at a newline only: orjson and other writers leave U+2028, NEL and the like unescaped inside
    strings, and str.splitlines would cut the line there."""
    done = created_and_validated(
        openai_client, [chat_line("separators", "acme-small", "one\u2028two\x85three\x1cfour")]
    )

    assert (done.status, done.errors) == ("completed", None)
    assert done.request_counts.completed == done.request_counts.total == 1
