"""Small ASGI helpers shared by the provider test servers."""

import orjson


async def read_body(receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def send_json(send, status: int, payload: dict, headers: dict[str, str] | None = None) -> None:
    data = orjson.dumps(payload)
    raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    raw_headers += [(name.encode(), value.encode()) for name, value in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": data})


async def start_stream(send, content_type: bytes) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", content_type)]})


async def send_chunk(send, data: bytes) -> None:
    await send({"type": "http.response.body", "body": data, "more_body": True})


async def end_stream(send) -> None:
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def estimate_tokens(text: str) -> int:
    return max(1, -(-len(text) // 4))
