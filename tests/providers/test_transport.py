"""The HTTP/1.1 transport under the providers' httpx requests (routing/providers/http1.py), against raw HTTP servers
on loopback that misbehave on purpose: keep-alive reuse and what ends it, gzip, chunked and read-to-close bodies,
proxies, TLS, the pool's limit, and the failures the adapters must see as upstream errors."""

import asyncio
import base64
import datetime
import gzip
import ipaddress
import socket
import ssl
import threading

import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from routing import upstream
from routing.providers import openai
from tests.loops import run
from tests.providers.conftest import provider_entry

ANSWER = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


class RawServer:
    """Reads each request's head and body, then answers with ``respond(writer)``; counts connections."""

    def __init__(self, respond):
        self.respond = respond
        self.connections = 0
        self.requests: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
                self.requests.append(head + await reader.readexactly(length))
                if not await self.respond(writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1"

    async def __aexit__(self, *exc) -> None:
        self.server.close()


def head(status: int, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} X"] + [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def json_answer(writer, *, encoding: str = "") -> bool:
    payload = orjson.dumps(ANSWER)
    headers = {"content-type": "application/json", "set-cookie": "session=tenant-a; Path=/"}
    if encoding == "gzip":
        payload, headers["content-encoding"] = gzip.compress(payload), "gzip"
    headers["content-length"] = str(len(payload))
    writer.write(head(200, headers) + payload)
    await writer.drain()
    return True


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_requests_reuse_one_kept_alive_connection_decode_gzip_and_keep_no_cookies(host):
    """By name as well as by address (a cookie jar may ignore cookies only from IP addresses)."""
    server = RawServer(lambda writer: json_answer(writer, encoding="gzip"))

    async def scenario():
        async with server as url:
            provider = provider_entry("openai", url.replace("127.0.0.1", host))
            return [await openai.chat_completion(provider, BODY) for _ in range(3)]

    replies = run(scenario())

    assert [reply.body["choices"][0]["message"]["content"] for reply in replies] == ["hi"] * 3
    assert server.connections == 1 and len(server.requests) == 3
    assert server.requests[0].startswith(b"POST /v1/chat/completions HTTP/1.1")
    # No cookie jar: what a provider sets for one tenant's request never rides along on the next one.
    assert not any(b"\r\ncookie:" in request.lower() for request in server.requests)


def test_a_body_cut_short_is_a_connection_error():
    async def cut_short(writer) -> bool:
        writer.write(head(200, {"content-type": "application/json", "content-length": "500"}) + b'{"id": "chat')
        await writer.drain()
        return False

    async def scenario():
        async with RawServer(cut_short) as url:
            await openai.chat_completion(provider_entry("openai", url), BODY)

    with pytest.raises(upstream.UpstreamConnectionError):
        run(scenario())


def test_a_stream_that_stalls_after_its_first_event_times_out():
    async def stall(writer) -> bool:
        writer.write(head(200, {"content-type": "text/event-stream", "transfer-encoding": "chunked"}))
        event = b'data: {"choices": [{"index": 0, "delta": {"content": "h"}}]}\n\n'
        writer.write(f"{len(event):x}\r\n".encode() + event + b"\r\n")
        await writer.drain()
        await asyncio.sleep(5)
        return False

    async def scenario():
        async with RawServer(stall) as url:
            stream = await openai.open_chat_stream(provider_entry("openai", url, timeout=0.3), {**BODY, "stream": True})
            events = []
            try:
                async for event in stream.events():
                    events.append(event)
            finally:
                await stream.aclose()

    with pytest.raises(upstream.UpstreamTimeout, match="stalled mid-stream"):
        run(scenario())


def test_an_unreachable_provider_is_a_connection_error():
    async def scenario():
        async with RawServer(json_answer) as url:
            pass
        await openai.chat_completion(provider_entry("openai", url), BODY)

    with pytest.raises(upstream.UpstreamConnectionError):
        run(scenario())


def test_an_egress_proxy_from_the_environment_carries_the_calls(monkeypatch):
    """HTTP_PROXY applies as it did with httpx's client: the proxy receives the absolute URL, with the credentials
    of the proxy's URL."""
    proxy = RawServer(json_answer)

    async def scenario():
        async with proxy as proxy_url:
            monkeypatch.setenv("HTTP_PROXY", proxy_url.removesuffix("/v1").replace("http://", "http://user:pw@"))
            monkeypatch.delenv("NO_PROXY", raising=False)
            monkeypatch.delenv("no_proxy", raising=False)
            return await openai.chat_completion(provider_entry("openai", "http://provider.invalid/v1"), BODY)

    reply = run(scenario())

    assert reply.body["choices"][0]["message"]["content"] == "hi"
    assert proxy.requests[0].startswith(b"POST http://provider.invalid/v1/chat/completions HTTP/1.1")
    assert b"\r\nProxy-Authorization: Basic dXNlcjpwdw==\r\n" in proxy.requests[0]


def test_a_host_in_no_proxy_is_called_directly(monkeypatch):
    """NO_PROXY exempts the provider's host: the proxy sees nothing, the provider answers."""
    proxy, provider = RawServer(json_answer), RawServer(json_answer)

    async def scenario():
        async with proxy as proxy_url, provider as provider_url:
            monkeypatch.setenv("HTTP_PROXY", proxy_url.removesuffix("/v1"))
            monkeypatch.setenv("NO_PROXY", "127.0.0.1")
            return await openai.chat_completion(provider_entry("openai", provider_url), BODY)

    reply = run(scenario())

    assert reply.body["choices"][0]["message"]["content"] == "hi"
    assert proxy.requests == [] and len(provider.requests) == 1


@pytest.fixture
def self_signed_certificate(tmp_path):
    """A certificate for 127.0.0.1 that no public CA signed: (certificate file, key file)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "llmops test provider")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    certificate_file, key_file = tmp_path / "provider.pem", tmp_path / "provider.key"
    certificate_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return certificate_file, key_file


@pytest.mark.parametrize("trusted", [False, True])
def test_tls_certificates_are_verified_against_the_configured_authorities(
    self_signed_certificate, monkeypatch, trusted
):
    certificate_file, key_file = self_signed_certificate
    if trusted:
        monkeypatch.setenv("SSL_CERT_FILE", str(certificate_file))
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(certificate_file, key_file)
    server = RawServer(json_answer)

    async def scenario():
        server.server = await asyncio.start_server(server.handle, "127.0.0.1", 0, ssl=server_context)
        try:
            url = f"https://127.0.0.1:{server.server.sockets[0].getsockname()[1]}/v1"
            return await openai.chat_completion(provider_entry("openai", url), BODY)
        finally:
            server.server.close()

    if trusted:
        assert run(scenario()).body["choices"][0]["message"]["content"] == "hi"
    else:
        with pytest.raises(upstream.UpstreamConnectionError):
            run(scenario())
        assert server.requests == []


class ThreadedServer:
    """A kept-alive HTTP server on a thread of its own, so it reads while the test holds the client's loop: each
    request's bytes are kept and ``received`` set once its body is in."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.received = threading.Event()
        self.requests: list[bytes] = []
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}/v1"

    def serve(self) -> None:
        connection, _ = self.listener.accept()
        with connection, connection.makefile("rb") as stream:
            while line := stream.readline():
                lines = [line]
                while lines[-1] != b"\r\n":
                    lines.append(stream.readline())
                length = next(int(h.split(b":")[1]) for h in lines if h.lower().startswith(b"content-length"))
                self.requests.append(b"".join(lines) + stream.read(length))
                self.received.set()
                payload = orjson.dumps(ANSWER)
                connection.sendall(head(200, {"content-type": "application/json", "content-length": str(len(payload))}))
                connection.sendall(payload)


def test_a_provider_request_leaves_with_its_body_before_the_loop_turns_again():
    """The request is on the wire when the call's first step ends, not a turn of the loop later."""
    server = ThreadedServer()

    async def scenario():
        provider = provider_entry("openai", server.url)
        await openai.chat_completion(provider, BODY)
        server.received.clear()
        call = asyncio.ensure_future(openai.chat_completion(provider, BODY))
        await asyncio.sleep(0)
        # Blocks the loop on purpose: a body left to a task that has not run yet never reaches the server.
        sent = server.received.wait(timeout=2)
        await call
        return sent

    assert run(scenario())
    assert len(server.requests) == 2 and server.requests[1].endswith(orjson.dumps(BODY))


async def answer_then_close(writer) -> bool:
    await json_answer(writer)
    return False


def test_a_connection_the_server_closes_is_not_reused():
    """Whether the server says ``connection: close`` or just closes an idle connection, the next call opens a new
    one and is answered."""

    async def says_close(writer) -> bool:
        payload = orjson.dumps(ANSWER)
        headers = {"content-type": "application/json", "content-length": str(len(payload)), "connection": "close"}
        writer.write(head(200, headers) + payload)
        await writer.drain()
        return True

    async def scenario(respond, pause: float):
        server = RawServer(respond)
        async with server as url:
            provider = provider_entry("openai", url)
            replies = []
            for _ in range(3):
                replies.append(await openai.chat_completion(provider, BODY))
                await asyncio.sleep(pause)
            return server.connections, [reply.body["choices"][0]["message"]["content"] for reply in replies]

    assert run(scenario(says_close, 0)) == (3, ["hi"] * 3)
    assert run(scenario(answer_then_close, 0.05)) == (3, ["hi"] * 3)


def test_chunked_and_read_to_close_bodies_are_read_whole():
    payload = orjson.dumps(ANSWER)

    async def chunked(writer) -> bool:
        writer.write(head(200, {"content-type": "application/json", "transfer-encoding": "chunked"}))
        for start in range(0, len(payload), 7):
            piece = payload[start : start + 7]
            writer.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True

    async def until_close(writer) -> bool:
        writer.write(head(200, {"content-type": "application/json", "connection": "close"}) + payload)
        await writer.drain()
        return False

    async def scenario(respond):
        server = RawServer(respond)
        async with server as url:
            provider = provider_entry("openai", url)
            replies = [await openai.chat_completion(provider, BODY) for _ in range(2)]
            return server.connections, [reply.body["choices"][0]["message"]["content"] for reply in replies]

    assert run(scenario(chunked)) == (1, ["hi", "hi"])
    assert run(scenario(until_close)) == (2, ["hi", "hi"])


# About 2.4 MB of events: past the point where reading pauses while the reader is behind (http1.STREAM_HIGH_WATER).
EVENTS = 40_000


def test_a_large_stream_read_slowly_arrives_whole_and_in_order():
    """Reading pauses while the reader is behind and resumes as it catches up: nothing is lost or reordered."""
    events = [
        f'data: {{"choices": [{{"index": 0, "delta": {{"content": "{n:06d}"}}}}]}}\n\n'.encode() for n in range(EVENTS)
    ]
    events.append(b"data: [DONE]\n\n")

    async def big_stream(writer) -> bool:
        writer.write(head(200, {"content-type": "text/event-stream", "transfer-encoding": "chunked"}))
        for start in range(0, len(events), 1000):
            piece = b"".join(events[start : start + 1000])
            writer.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True

    async def scenario():
        async with RawServer(big_stream) as url:
            stream = await openai.open_chat_stream(provider_entry("openai", url), {**BODY, "stream": True})
            received = []
            try:
                async for event in stream.events():
                    received.append(event)
                    if len(received) % 5000 == 0:
                        await asyncio.sleep(0.05)
            finally:
                await stream.aclose()
            return received

    received = run(scenario())
    contents = [
        orjson.loads(event[6:])["choices"][0]["delta"]["content"] for event in received if "[DONE]" not in event
    ]
    assert contents == [f"{n:06d}" for n in range(EVENTS)]


def test_a_call_cancelled_mid_answer_leaves_no_answer_for_the_next_call():
    """The cancelled call's connection is closed: its late answer can never be read as the next call's."""
    late = {**ANSWER, "choices": [{**ANSWER["choices"][0], "message": {"role": "assistant", "content": "late"}}]}
    answers = [late, ANSWER]

    async def slow_then_fast(writer) -> bool:
        answer = answers.pop(0)
        if answer is late:
            await asyncio.sleep(0.3)
        payload = orjson.dumps(answer)
        writer.write(head(200, {"content-type": "application/json", "content-length": str(len(payload))}) + payload)
        await writer.drain()
        return True

    async def scenario():
        server = RawServer(slow_then_fast)
        async with server as url:
            provider = provider_entry("openai", url)
            call = asyncio.ensure_future(openai.chat_completion(provider, BODY))
            await asyncio.sleep(0.1)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            reply = await openai.chat_completion(provider, BODY)
            await asyncio.sleep(0.4)
            return server.connections, reply.body["choices"][0]["message"]["content"]

    assert run(scenario()) == (2, "hi")


def test_calls_past_the_pool_limit_wait_for_a_connection(settings):
    settings.LLMOPS_UPSTREAM_MAX_CONNECTIONS = 1

    async def slow_answer(writer) -> bool:
        await asyncio.sleep(0.05)
        return await json_answer(writer)

    async def scenario():
        server = RawServer(slow_answer)
        async with server as url:
            provider = provider_entry("openai", url)
            replies = await asyncio.gather(*(openai.chat_completion(provider, BODY) for _ in range(4)))
            return server.connections, len(server.requests), len(replies)

    assert run(scenario()) == (1, 4, 4)


def test_a_header_that_breaks_a_line_is_refused_before_anything_is_sent():
    server = RawServer(json_answer)

    async def scenario():
        async with server as url:
            await openai.chat_completion(provider_entry("openai", url, api_key="sk-1\r\nx-injected: 1"), BODY)

    with pytest.raises(upstream.UpstreamConnectionError):
        run(scenario())
    assert server.requests == []


class TunnelProxy:
    """An HTTP proxy that answers CONNECT with 200 and then relays bytes both ways; keeps each CONNECT's head."""

    def __init__(self):
        self.connects: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connect = await reader.readuntil(b"\r\n\r\n")
        self.connects.append(connect)
        host, port = connect.split(b" ")[1].decode().rsplit(":", 1)
        upstream_reader, upstream_writer = await asyncio.open_connection(host, int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

        async def relay(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except ConnectionError:
                pass
            finally:
                sink.close()

        await asyncio.gather(relay(reader, upstream_writer), relay(upstream_reader, writer))

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return f"http://user:p%40ss@127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc) -> None:
        self.server.close()


def test_an_https_provider_is_reached_through_the_proxy_by_a_verified_tunnel(self_signed_certificate, monkeypatch):
    """HTTPS_PROXY: a CONNECT carrying the proxy URL's credentials, then TLS with the provider through the tunnel,
    its certificate checked against the configured authorities; one tunnel for several calls."""
    certificate_file, key_file = self_signed_certificate
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate_file))
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(certificate_file, key_file)
    server, proxy = RawServer(json_answer), TunnelProxy()

    async def scenario():
        server.server = await asyncio.start_server(server.handle, "127.0.0.1", 0, ssl=server_context)
        try:
            async with proxy as proxy_url:
                monkeypatch.setenv("HTTPS_PROXY", proxy_url)
                url = f"https://127.0.0.1:{server.server.sockets[0].getsockname()[1]}/v1"
                provider = provider_entry("openai", url)
                return [await openai.chat_completion(provider, BODY) for _ in range(2)]
        finally:
            server.server.close()

    replies = run(scenario())

    assert [reply.body["choices"][0]["message"]["content"] for reply in replies] == ["hi", "hi"]
    assert len(proxy.connects) == 1 and server.connections == 1 and len(server.requests) == 2
    authorization = "Basic " + base64.b64encode(b"user:p@ss").decode()
    assert f"Proxy-Authorization: {authorization}".encode() in proxy.connects[0]


def test_an_error_answer_to_a_stream_cut_short_gives_its_connection_back(settings):
    """A stream asked for and answered 429 with a body that stalls: the call fails as the 429, and with a pool of one
    connection the next call is still answered."""
    settings.LLMOPS_UPSTREAM_MAX_CONNECTIONS = 1
    answers = ["stall", "answer"]

    async def stall_then_answer(writer) -> bool:
        if answers.pop(0) == "answer":
            return await json_answer(writer)
        writer.write(head(429, {"content-type": "application/json", "content-length": "100"}) + b'{"error":')
        await writer.drain()
        await asyncio.sleep(1)
        return False

    async def scenario():
        async with RawServer(stall_then_answer) as url:
            provider = provider_entry("openai", url, timeout=0.3)
            with pytest.raises(upstream.UpstreamRejected):
                await openai.open_chat_stream(provider, {**BODY, "stream": True})
            return await openai.chat_completion(provider, BODY)

    assert run(scenario()).body["choices"][0]["message"]["content"] == "hi"


def test_a_proxy_the_client_cannot_use_fails_the_call_and_is_not_bypassed(monkeypatch, caplog):
    """An https:// proxy URL (TLS to the proxy itself) is refused, its reason logged; the provider is not called
    around it."""
    provider = RawServer(json_answer)

    async def scenario():
        async with provider as provider_url:
            monkeypatch.setenv("HTTP_PROXY", "https://proxy.invalid:3128")
            monkeypatch.delenv("NO_PROXY", raising=False)
            monkeypatch.delenv("no_proxy", raising=False)
            await openai.chat_completion(provider_entry("openai", provider_url), BODY)

    with pytest.raises(upstream.UpstreamConnectionError):
        run(scenario())
    assert provider.requests == []
    assert "only http:// proxies are supported, not https://" in caplog.text


def _undecodable(status: int, content_type: str):
    async def respond(writer) -> bool:
        payload = b"not gzip at all"
        headers = {"content-type": content_type, "content-encoding": "gzip", "content-length": str(len(payload))}
        headers["retry-after"] = "7"
        writer.write(head(status, headers) + payload)
        await writer.drain()
        return True

    return respond


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "streamed"])
def test_an_answer_its_content_encoding_does_not_decode_is_the_providers_invalid_answer(stream):
    """A failure of the provider, so retried and fallen back from, never the gateway's own 500."""
    content_type = "text/event-stream" if stream else "application/json"

    async def scenario():
        async with RawServer(_undecodable(200, content_type)) as url:
            provider = provider_entry("openai", url)
            if not stream:
                return await openai.chat_completion(provider, BODY)
            opened = await openai.open_chat_stream(provider, {**BODY, "stream": True})
            try:
                return [event async for event in opened.events()]
            finally:
                await opened.aclose()

    with pytest.raises(upstream.UpstreamInvalidResponse, match="does not decode"):
        run(scenario())


async def _error_cut_short(writer) -> bool:
    headers = {"content-type": "application/json", "content-length": "500", "retry-after": "7"}
    writer.write(head(429, headers) + b'{"error": {"mess')
    await writer.drain()
    return False


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "streamed"])
@pytest.mark.parametrize(
    "respond", [_undecodable(429, "application/json"), _error_cut_short], ids=["undecodable", "cut-short"]
)
def test_an_error_answer_whose_body_cannot_be_read_keeps_its_status_and_retry_after(respond, stream):
    """A 429 whose body does not decode or never arrives whole is still a 429 to wait out, not a failure to retry
    at once."""

    async def scenario():
        async with RawServer(respond) as url:
            provider = provider_entry("openai", url)
            if stream:
                return await openai.open_chat_stream(provider, {**BODY, "stream": True})
            return await openai.chat_completion(provider, BODY)

    with pytest.raises(upstream.UpstreamRejected) as rejected:
        run(scenario())

    assert (rejected.value.upstream_status, rejected.value.retry_after) == (429, 7.0)
