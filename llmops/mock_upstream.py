"""A local OpenAI-compatible upstream for the demo, the tests and the benchmarks.

A plain ASGI app (no Django), so it costs little next to the gateway it stands behind.
Usage figures are plausible and deterministic: prompts counted with tiktoken as OpenAI counts them, and OpenAI's
prompt caching imitated (a prompt of 1,024 tokens or more seen before reports its cached
prefix in 128-token steps). The upstream model name switches on failure modes for tests:
``fail-<status>`` answers with that status (naming ``param-<name>`` as its ``param``, with a ``retry-after-<N>``
header), ``stall`` waits STALL_SECONDS before answering,
``no-usage`` leaves usage out, ``break`` ends a stream half way without ``[DONE]``, ``reopen-<N>`` sends a stream's
finish reason after the first N pieces of each choice too, then the rest of the choice and its finish reason again
(as a provider that writes to a choice after finishing it does), ``slow-stream`` waits SLOW_STREAM_SECONDS between
chunks, ``refuse`` answers with a refusal (``message.refusal``, content null;
streamed, ``delta.refusal`` chunks), ``tool-call`` answers with a call of a ``lookup`` tool whose arguments are the
answer's text (``message.tool_calls``, finish reason ``tool_calls``; streamed, ``delta.tool_calls`` pieces of the
arguments), ``malformed-<kind>`` answers 200 with something that is not a usable chat
completion (MALFORMED_USAGE and MALFORMED_BODIES; streamed, a usage kind spoils the final usage chunk and a body kind
is one event half way through). ``n`` is honoured as OpenAI does: n choices, and usage bills n completions.

Answers whose quality differs in a controlled way, for shadow evaluation (docs/quality.md). A classification prompt
is one with a line ``Labels: a, b, c`` in any message: every model answers one of those labels, chosen from a hash of
the last user message (so a compressed history gets the same label as the full one), and a model whose upstream name
contains ``wrong-<N>`` answers another label instead for N% of such prompts, the ones a second hash of that message
picks: the same prompts every time, and about N in 100 of any set of distinct ones. A model whose name contains
``judge`` answers a comparison prompt (one with a ``Reference answer:`` and a ``Candidate answer:`` section, as the
gateway's LLM judge sends) with ``{"verdict": "equivalent"}`` when the two answers are equal after trimming and
case-folding, else ``{"verdict": "worse"}``, with a reason. Usage is reported as for any other prompt.

``POST /v1/embeddings`` answers deterministically: each input's vector (DEFAULT_DIMENSIONS floats, or ``dimensions``)
is drawn from a seed hashed from the model and the input, normalised to length 1, as float or base64 (little-endian
float32, as OpenAI sends it) by ``encoding_format``; usage counts the inputs' tokens as the gateway does. The model
name's ``fail-<status>``, ``stall`` and ``no-usage`` apply, ``malformed-body-array`` and
``malformed-body-truncated`` answer 200 with a body that is no embeddings list (MALFORMED_BODIES), and
``bad-encoding`` answers 200 with a body whose ``Content-Encoding: gzip`` does not decode (it is plain JSON).

OpenAI's Files and Batch API are imitated in memory (``POST /v1/files``, ``GET /v1/files/{id}/content``,
``POST /v1/batches``, ``GET /v1/batches/{id}``): a batch reports ``in_progress`` until BATCH_SECONDS have
passed, then ``completed`` with an output file answering every line as ``/v1/chat/completions`` would (a
``fail-<status>`` line answered with that status and a ``{message, code}`` error body). When any line's model name
contains ``batch-expire``, the batch ends ``expired`` instead, its output file answering only the other lines and no
error file, so those lines are left unanswered; a ``batch-nobody`` line is answered 200 with no body, and a
``batch-garbled`` line's rows cannot be read (an array, a row cut short, and one whose custom_id is an array).
"""

import asyncio
import base64
import hashlib
import re
import time
from collections import OrderedDict

import numpy as np
import orjson

from routing.max_tokens import requested_max_tokens
from routing.tokens import count_chat_tokens, count_definition_tokens, count_embedding_tokens, embedding_inputs

STALL_SECONDS = 30
SLOW_STREAM_SECONDS = 0.2
# What a ``tool-call`` model calls.
TOOL_NAME = "lookup"
TOOL_CALL = {"id": "call_mock", "type": "function"}
CACHE_MIN_TOKENS = 1024
CACHE_STEP = 128
SEEN_PROMPTS_LIMIT = 10_000
FAIL_PATTERN = re.compile(r"fail-(\d{3})")
# With fail-<status>: the error names this parameter, and says when to retry.
FAILED_PARAM_PATTERN = re.compile(r"param-([a-z_]+)")
RETRY_AFTER_PATTERN = re.compile(r"retry-after-(\d+)")
BATCH_SECONDS = 0.5
BATCH_EXPIRE_MARK = "batch-expire"
BATCH_NO_BODY_MARK = "batch-nobody"
BATCH_GARBLED_MARK = "batch-garbled"
GARBLED_ROWS = b'["not", "an", "object"]\n{"custom_id": "cut\n{"custom_id": ["only"], "response": null}\n'
# As text-embedding-3-small's.
DEFAULT_DIMENSIONS = 1536
FILE_PATH = re.compile(r"/v1/files/([\w-]+)/content")
BATCH_PATH = re.compile(r"/v1/batches/([\w-]+)")
MALFORMED_PATTERN = re.compile(r"malformed-([a-z]+-[a-z]+)")
WRONG_PATTERN = re.compile(r"wrong-(\d{1,3})")
REOPEN_PATTERN = re.compile(r"reopen-(\d+)")
LABELS_LINE = re.compile(r"^\s*Labels:\s*(.+?)\s*$", re.IGNORECASE | re.MULTILINE)
JUDGED_SECTIONS = re.compile(r"Reference answer:\s*(.*?)\s*Candidate answer:\s*(.*)\Z", re.DOTALL)
# Usage kinds: the usage field spoiled and the value it reports.
MALFORMED_USAGE = {
    "usage-text": ("prompt_tokens", "abc"),
    "usage-negative": ("completion_tokens", -1_125_000),
    "usage-float": ("completion_tokens", 1e30),
    "usage-inflated": ("completion_tokens", 10**12),
}
# Body kinds: the whole answer (or, streamed, one event) as sent.
MALFORMED_BODIES = {
    "body-array": lambda payload: orjson.dumps([payload]),
    "choices-text": lambda payload: orjson.dumps({**payload, "choices": "abc"}),
    "body-truncated": lambda payload: orjson.dumps(payload)[:20],
}


def _text_of(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def _multipart_file(body: bytes, content_type: str) -> bytes | None:
    """The content of the part named ``file`` of a multipart/form-data body."""
    _, _, boundary = content_type.partition("boundary=")
    if not boundary:
        return None
    for part in body.split(b"--" + boundary.strip('"').encode()):
        headers, _, content = part.partition(b"\r\n\r\n")
        if b'name="file"' in headers:
            return content.removesuffix(b"\r\n")
    return None


def _vector(model: str, item: str | list[int], dimensions: int, base64_encoded: bool) -> list[float] | str:
    """The same input to the same model always embeds to the same unit vector."""
    seed = hashlib.sha256(orjson.dumps([model, item])).digest()
    vector = np.random.default_rng(int.from_bytes(seed[:8], "little")).standard_normal(dimensions)
    vector = (vector / np.linalg.norm(vector)).astype("<f4")
    return base64.b64encode(vector.tobytes()).decode() if base64_encoded else vector.tolist()


def _hash_int(*parts: str) -> int:
    return int.from_bytes(hashlib.sha256("\x00".join(parts).encode()).digest()[:8], "big")


def _last_user_text(messages: list) -> str:
    return next((_text_of(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")


def classification_labels(messages: list) -> list[str]:
    """The labels of a classification prompt (a ``Labels: a, b, c`` line in any message), in order; [] otherwise."""
    for message in messages:
        found = LABELS_LINE.search(_text_of(message.get("content")))
        if found:
            labels = [label.strip() for label in found.group(1).split(",")]
            return list(dict.fromkeys(label for label in labels if label))
    return []


def classification_answer(messages: list, labels: list[str], model: str) -> str:
    """The label a model answers: the right one (a hash of the last user message), or for a ``wrong-<N>`` model and
    the N% of prompts a second hash picks, another one."""
    text = _last_user_text(messages)
    right = _hash_int("label", text) % len(labels)
    wrong = WRONG_PATTERN.search(model)
    if wrong is None or len(labels) < 2 or _hash_int("wrong", text) % 100 >= int(wrong.group(1)):
        return labels[right]
    return labels[(right + 1 + _hash_int("other", text) % (len(labels) - 1)) % len(labels)]


def judge_answer(messages: list) -> str | None:
    """A ``judge`` model's verdict on a comparison prompt; None for any other prompt."""
    sections = JUDGED_SECTIONS.search(_last_user_text(messages))
    if sections is None:
        return None
    reference, candidate = (section.strip().casefold() for section in sections.groups())
    if reference == candidate:
        return orjson.dumps({"verdict": "equivalent", "reason": "The answers are the same."}).decode()
    return orjson.dumps({"verdict": "worse", "reason": "The candidate differs from the reference."}).decode()


def _served_tier(body: dict) -> dict:
    """The `service_tier` OpenAI reports when a request names one: flex when asked for, else the default tier."""
    if "service_tier" not in body:
        return {}
    return {"service_tier": "flex" if body["service_tier"] == "flex" else "default"}


def _choices(body: dict) -> int:
    return int(body.get("n") or 1)


def _per_choice_tokens(body: dict) -> int:
    """Each answer runs to max_tokens, at most 24 tokens."""
    return max(1, min(int(requested_max_tokens(body) or 64), 24))


class MockUpstream:
    def __init__(self, *, latency_ms: float = 0.0, required_key: str = ""):
        self.latency = latency_ms / 1000
        self.required_key = required_key
        self.seen_prompts: OrderedDict[str, None] = OrderedDict()
        self.requests_served = 0
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}
        self.batch_lines_served = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        path, method = scope["path"], scope["method"]
        if self.required_key and dict(scope["headers"]).get(b"authorization") != f"Bearer {self.required_key}".encode():
            await self._error(send, 401, "Incorrect API key provided.", "invalid_api_key")
            return
        if path == "/v1/models" and method == "GET":
            await self._json(send, 200, {"object": "list", "data": [{"id": "mock-small", "object": "model"}]})
            return
        if path.startswith(("/v1/files", "/v1/batches")):
            await self._batch_api(send, method, path, scope, await self._read_body(receive))
            return
        if path == "/v1/embeddings" and method == "POST":
            await self._embeddings(send, await self._read_body(receive))
            return
        if path != "/v1/chat/completions" or method != "POST":
            await self._error(send, 404, f"Unknown path {method} {path}", "not_found")
            return
        try:
            body = orjson.loads(await self._read_body(receive))
            messages = body["messages"]
            model = str(body["model"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            await self._error(send, 400, "Body must be JSON with 'model' and 'messages'.", "invalid_request")
            return
        self.requests_served += 1
        if self.latency:
            await asyncio.sleep(self.latency)
        failure = FAIL_PATTERN.search(model)
        if failure:
            await self._fail(send, model, int(failure.group(1)))
            return
        if "stall" in model:
            await asyncio.sleep(STALL_SECONDS)
        usage = self._usage(messages, body)
        answer = self._answer(messages, _per_choice_tokens(body), model=model)
        malformed = MALFORMED_PATTERN.search(model)
        malformed = malformed.group(1) if malformed else ""
        if malformed in MALFORMED_USAGE:
            field, value = MALFORMED_USAGE[malformed]
            usage = {**usage, field: value}
        if body.get("stream"):
            await self._stream(send, body, model, answer, usage, spoil=MALFORMED_BODIES.get(malformed))
            return
        reply = self._completion(
            model,
            answer,
            None if "no-usage" in model else usage,
            choices=_choices(body),
            refusing="refuse" in model,
            calling="tool-call" in model,
        )
        reply.update(_served_tier(body))
        if malformed in MALFORMED_BODIES:
            await self._raw(send, 200, MALFORMED_BODIES[malformed](reply), b"application/json")
        else:
            await self._json(send, 200, reply)

    async def _embeddings(self, send, raw: bytes) -> None:
        try:
            body = orjson.loads(raw)
            model = str(body["model"])
            inputs = embedding_inputs(body["input"])
            dimensions = int(body.get("dimensions") or DEFAULT_DIMENSIONS)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            await self._error(send, 400, "Body must be JSON with 'model' and 'input'.", "invalid_request")
            return
        self.requests_served += 1
        failure = FAIL_PATTERN.search(model)
        if failure:
            await self._fail(send, model, int(failure.group(1)))
            return
        if "stall" in model:
            await asyncio.sleep(STALL_SECONDS)
        base64_encoded = body.get("encoding_format") == "base64"
        data = [
            {"object": "embedding", "index": index, "embedding": _vector(model, item, dimensions, base64_encoded)}
            for index, item in enumerate(inputs)
        ]
        reply = {"object": "list", "data": data, "model": model}
        if "no-usage" not in model:
            tokens = sum(count_embedding_tokens(inputs, model=model))
            reply["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
        malformed = MALFORMED_PATTERN.search(model)
        if malformed and malformed.group(1) in MALFORMED_BODIES:
            await self._raw(send, 200, MALFORMED_BODIES[malformed.group(1)](reply), b"application/json")
        elif "bad-encoding" in model:
            await self._raw(send, 200, orjson.dumps(reply), b"application/json", encoding=b"gzip")
        else:
            await self._json(send, 200, reply)

    async def _batch_api(self, send, method: str, path: str, scope, body: bytes) -> None:
        if path == "/v1/files" and method == "POST":
            content_type = dict(scope["headers"]).get(b"content-type", b"").decode()
            content = _multipart_file(body, content_type)
            if content is None:
                await self._error(send, 400, "Expected a multipart body with a 'file' part.", "invalid_request")
                return
            file_id = f"file-mock{len(self.files)}{time.monotonic_ns()}"
            self.files[file_id] = content
            payload = {
                "id": file_id,
                "object": "file",
                "bytes": len(content),
                "purpose": "batch",
                "status": "processed",
            }
            await self._json(send, 200, payload)
            return
        match = FILE_PATH.fullmatch(path)
        if match and method == "GET" and match.group(1) in self.files:
            await self._raw(send, 200, self.files[match.group(1)], b"application/octet-stream")
            return
        if path == "/v1/batches" and method == "POST":
            request = orjson.loads(body or b"{}")
            if request.get("input_file_id") not in self.files:
                await self._error(send, 400, "input_file_id is not a known file.", "invalid_request")
                return
            batch_id = f"batch_mock{len(self.batches)}{time.monotonic_ns()}"
            self.batches[batch_id] = {"id": batch_id, "input_file_id": request["input_file_id"], "at": time.monotonic()}
            await self._json(send, 200, self._batch_state(batch_id))
            return
        match = BATCH_PATH.fullmatch(path)
        if match and method == "GET" and match.group(1) in self.batches:
            await self._json(send, 200, self._batch_state(match.group(1)))
            return
        await self._error(send, 404, f"Unknown path {method} {path}", "not_found")

    def _batch_state(self, batch_id: str) -> dict:
        batch = self.batches[batch_id]
        state = {"id": batch_id, "object": "batch", "input_file_id": batch["input_file_id"], "status": "in_progress"}
        if time.monotonic() - batch["at"] < BATCH_SECONDS:
            return state
        if "output_file_id" not in batch:
            lines = [orjson.loads(raw) for raw in self.files[batch["input_file_id"]].splitlines() if raw.strip()]
            answered = [line for line in lines if BATCH_EXPIRE_MARK not in str(line["body"].get("model"))]
            batch["status"] = "completed" if len(answered) == len(lines) else "expired"
            batch["output_file_id"] = f"file-mockout{time.monotonic_ns()}"
            self.files[batch["output_file_id"]] = self._batch_output(answered)
        return {**state, "status": batch["status"], "output_file_id": batch["output_file_id"], "error_file_id": None}

    def _batch_output(self, lines: list[dict]) -> bytes:
        rows, garbled = [], b""
        for line in lines:
            body, model = line["body"], str(line["body"].get("model"))
            self.batch_lines_served += 1
            if BATCH_GARBLED_MARK in model:
                garbled += GARBLED_ROWS
                continue
            failure = FAIL_PATTERN.search(model)
            if failure:
                error = {"message": f"mock upstream told to fail by model {model}", "code": "mock_failure"}
                response = {"status_code": int(failure.group(1)), "request_id": "mock", "body": {"error": error}}
            elif BATCH_NO_BODY_MARK in model:
                response = {"status_code": 200, "request_id": "mock", "body": None}
            else:
                usage = self._usage(body["messages"], body)
                answer = self._answer(body["messages"], _per_choice_tokens(body), model=model)
                reply = self._completion(model, answer, usage, choices=_choices(body))
                response = {"status_code": 200, "request_id": "mock", "body": reply}
            rows.append({"id": f"batch_req_{line['custom_id']}", "custom_id": line["custom_id"], "response": response})
        return garbled + b"".join(orjson.dumps({**row, "error": None}) + b"\n" for row in rows)

    async def _lifespan(self, receive, send):
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    @staticmethod
    async def _read_body(receive) -> bytes:
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                return b"".join(chunks)

    def _usage(self, messages: list, body: dict) -> dict:
        prompt_text = "\n".join(f"{m.get('role')}: {_text_of(m.get('content'))}" for m in messages)
        # Counted the way OpenAI counts, so the gateway's reservations match what the mock then reports.
        model = str(body.get("model", ""))
        prompt_tokens = count_chat_tokens(messages, model=model) + count_definition_tokens(body, model=model)
        cached = 0
        if prompt_tokens >= CACHE_MIN_TOKENS:
            digest = hashlib.sha256(prompt_text.encode()).hexdigest()
            if digest in self.seen_prompts:
                cached = (prompt_tokens // CACHE_STEP) * CACHE_STEP
                self.seen_prompts.move_to_end(digest)
            else:
                self.seen_prompts[digest] = None
                if len(self.seen_prompts) > SEEN_PROMPTS_LIMIT:
                    self.seen_prompts.popitem(last=False)
        completion_tokens = _per_choice_tokens(body) * _choices(body)
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached},
        }

    @staticmethod
    def _answer(messages: list, completion_tokens: int, *, model: str = "") -> list[str]:
        """The answer's pieces (one per streamed chunk)."""
        # A judge's comparison quotes the request, whose Labels line must not make it a classification.
        verdict = judge_answer(messages) if "judge" in model else None
        if verdict is not None:
            return [verdict]
        labels = classification_labels(messages)
        if labels:
            return [classification_answer(messages, labels, model)]
        last_user = _last_user_text(messages)
        words = ["Mock", "answer", "to:"] + last_user.split()[:8] + ["and", "some", "more", "words"] * 8
        return [("" if i == 0 else " ") + word for i, word in enumerate(words[:completion_tokens])]

    @staticmethod
    def _completion(
        model: str,
        answer: list[str],
        usage: dict | None,
        *,
        choices: int = 1,
        refusing: bool = False,
        calling: bool = False,
    ) -> dict:
        text = "".join(answer)
        # A refusal comes in its own field, with no content.
        message = {"role": "assistant", "content": None if refusing else text, "refusal": text if refusing else None}
        if calling:
            function = {"name": TOOL_NAME, "arguments": text}
            message = {"role": "assistant", "content": None, "tool_calls": [{**TOOL_CALL, "function": function}]}
        reply = {
            "id": f"chatcmpl-mock{time.monotonic_ns()}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": index,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": "tool_calls" if calling else "stop",
                }
                for index in range(choices)
            ],
            "system_fingerprint": "fp_mock",
        }
        if usage is not None:
            reply["usage"] = usage
        return reply

    async def _stream(self, send, body: dict, model: str, answer: list[str], usage: dict, spoil=None) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")],
            }
        )
        base = {
            "id": f"chatcmpl-mock{time.monotonic_ns()}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": "fp_mock",
            **_served_tier(body),
        }

        async def event(payload) -> None:
            data = payload if isinstance(payload, bytes) else orjson.dumps(payload)
            await send({"type": "http.response.body", "body": b"data: " + data + b"\n\n", "more_body": True})

        answered_in = "refusal" if "refuse" in model else "content"
        calling = "tool-call" in model
        ended = "tool_calls" if calling else "stop"
        reopen = REOPEN_PATTERN.search(model)
        reopened_after = int(reopen.group(1)) if reopen else None
        for index in range(_choices(body)):
            finishing = {**base, "choices": [{"index": index, "delta": {}, "finish_reason": ended}]}
            await event(
                {
                    **base,
                    "choices": [{"index": index, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
                }
            )
            if calling:
                opened = {"tool_calls": [{"index": 0, **TOOL_CALL, "function": {"name": TOOL_NAME, "arguments": ""}}]}
                await event({**base, "choices": [{"index": index, "delta": opened, "finish_reason": None}]})
            for i, piece in enumerate(answer):
                if "break" in model and i == len(answer) // 2:
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                    return
                if "slow-stream" in model:
                    await asyncio.sleep(SLOW_STREAM_SECONDS)
                delta = (
                    {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}
                    if calling
                    else {answered_in: piece}
                )
                chunk = {**base, "choices": [{"index": index, "delta": delta, "finish_reason": None}]}
                await event(spoil(chunk) if spoil is not None and i == len(answer) // 2 else chunk)
                if i + 1 == reopened_after:
                    await event(finishing)
            await event(finishing)
        if (body.get("stream_options") or {}).get("include_usage") and "no-usage" not in model:
            await event({**base, "choices": [], "usage": usage})
        await event(b"[DONE]")
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    @staticmethod
    async def _json(send, status: int, payload: dict, headers: dict[str, str] | None = None) -> None:
        data = orjson.dumps(payload)
        extra = [(name.encode(), value.encode()) for name, value in (headers or {}).items()]
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(data)).encode()),
                    *extra,
                ],
            }
        )
        await send({"type": "http.response.body", "body": data})

    @staticmethod
    async def _raw(send, status: int, data: bytes, content_type: bytes, *, encoding: bytes | None = None) -> None:
        """``data`` as it is; ``encoding`` its Content-Encoding header, whatever ``data`` is."""
        headers = [(b"content-type", content_type), (b"content-length", str(len(data)).encode())]
        if encoding is not None:
            headers.append((b"content-encoding", encoding))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": data})

    async def _error(
        self, send, status: int, message: str, code: str, *, param: str | None = None, headers: dict | None = None
    ) -> None:
        error_type = "server_error" if status >= 500 else "invalid_request_error"
        error = {"message": message, "type": error_type, "param": param, "code": code}
        await self._json(send, status, {"error": error}, headers)

    async def _fail(self, send, model: str, status: int) -> None:
        """The error a model named with fail-<status> answers, with its param-<name> and retry-after-<N>."""
        param, retry_after = FAILED_PARAM_PATTERN.search(model), RETRY_AFTER_PATTERN.search(model)
        await self._error(
            send,
            status,
            f"mock upstream told to fail by model {model}",
            "mock_failure",
            param=param.group(1) if param else None,
            headers={"retry-after": retry_after.group(1)} if retry_after else None,
        )
