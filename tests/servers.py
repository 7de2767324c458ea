"""Run ASGI apps on loopback in a background thread, and services as child processes, for tests that speak real
HTTP."""

import os
import signal
import socket
import subprocess
import threading
import time
from collections import deque
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import orjson
import uvicorn
from django.db import connection

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RecordingUpstream:
    """The mock upstream (llmops.mock_upstream), keeping every chat body it is sent as the gateway sent it
    (``chat_bodies``); the mock answers ``forwarded(body)``, the body itself unless a subclass changes it."""

    def __init__(self):
        from llmops.mock_upstream import MockUpstream

        self.mock = MockUpstream()
        self.chat_bodies: list[dict] = []

    def forwarded(self, body: dict) -> dict:
        return body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != "/v1/chat/completions":
            await self.mock(scope, receive, send)
            return
        body = orjson.loads(await self.mock._read_body(receive))
        self.chat_bodies.append(body)
        answered = orjson.dumps(self.forwarded(body))

        async def replayed():
            return {"type": "http.request", "body": answered, "more_body": False}

        await self.mock(scope, replayed, send)


class ThreadedServer:
    def __init__(self, app, *, port: int | None = None):
        self.port = port or free_port()
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="auto",
            timeout_graceful_shutdown=1,
            proxy_headers=False,  # as production runs uvicorn (Procfile): the app decides whom to believe
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "ThreadedServer":
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"server on port {self.port} did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def serving(app):
    """For a fixture, ``yield from serving(app)``: ``app`` on loopback (ThreadedServer), as ``server.app``."""
    with ThreadedServer(app) as server:
        server.app = app
        yield server


@dataclass
class ReceivedRequest:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """An HTTP endpoint on loopback that records what it receives and answers with the statuses queued."""

    statuses: deque = field(default_factory=deque)
    received: list[ReceivedRequest] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {name.decode().lower(): value.decode() for name, value in scope["headers"]}
        with self.lock:
            self.received.append(ReceivedRequest(scope["path"], headers, body))
            status = self.statuses.popleft() if self.statuses else 200
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok" if status < 300 else b"receiver says no"})


def committed_database_url() -> str:
    """The test database pytest-django created (test_<name>), where this test's committed rows are."""
    db = connection.settings_dict
    password = f":{db['PASSWORD']}" if db["PASSWORD"] else ""
    return f"postgres://{db['USER']}{password}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


class ServiceProcess:
    """A child process that can be started again after a SIGKILL."""

    def __init__(self, args: list[str], env: dict[str, str], *, health_url: str = ""):
        self.args, self.env, self.health_url = args, env, health_url
        self.process: subprocess.Popen | None = None

    def start(self) -> "ServiceProcess":
        self.process = subprocess.Popen(self.args, cwd=ROOT, env=self.env)
        if self.health_url:
            # One client for the whole wait: each httpx.get() would build a TLS context (tens of milliseconds of CPU,
            # taken from the process starting up).
            with httpx.Client(timeout=1) as client:
                deadline = time.monotonic() + 30
                while True:
                    try:
                        if client.get(self.health_url).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    if time.monotonic() > deadline or self.process.poll() is not None:
                        raise RuntimeError(f"{self.args} did not come up")
                    time.sleep(0.05)
        return self

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


class TcpProxy:
    """A loopback TCP proxy to ``target`` (host, port) that can be cut, to take a server away from the processes that
    reach it through the proxy without touching the server: during ``outage()`` every connection through it is
    dropped and new ones are closed as soon as they are accepted, as a server that went away refuses them."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.cut = threading.Event()
        self.lock = threading.Lock()
        self.sockets: set[socket.socket] = set()
        self.thread = threading.Thread(target=self._accept, name="tcp-proxy", daemon=True)

    def url_for(self, url: str) -> str:
        """``url`` (a database or service URL for the target) pointed at the proxy instead."""
        parts = urlsplit(url)
        credentials = parts.netloc.rpartition("@")[0]
        netloc = f"{credentials}@127.0.0.1:{self.port}" if credentials else f"127.0.0.1:{self.port}"
        return parts._replace(netloc=netloc).geturl()

    def __enter__(self) -> "TcpProxy":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.listener.close()
        self._drop_all()

    @contextmanager
    def outage(self):
        self.cut.set()
        self._drop_all()
        try:
            yield
        finally:
            self.cut.clear()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.cut.is_set():
                client.close()
                continue
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self.lock:
                self.sockets |= {client, server}
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            self._drop(source)
            self._drop(sink)

    def _drop(self, sock: socket.socket) -> None:
        with self.lock:
            self.sockets.discard(sock)
        with suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()

    def _drop_all(self) -> None:
        with self.lock:
            sockets = list(self.sockets)
        for sock in sockets:
            self._drop(sock)
