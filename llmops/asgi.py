"""ASGI entry point: ``uvicorn llmops.asgi:application``.

Requests under /v1/ go to a Django handler without the middleware stack. The /v1 API is for
bearer keys, not browsers, so it needs no session, CSRF, auth or message middleware, and each
of those would hop to a worker thread on every request (they are sync-first in Django).
Everything else (admin, /api, health) gets the full stack. ``POST /v1/chat/completions``, most of the
traffic, is answered by its view without resolving the URL (``DIRECT_ROUTES``).
"""

import asyncio
import contextlib
import gc
import logging
import os
import threading
from collections.abc import Callable
from typing import Any, NamedTuple

import django
from asgiref.sync import sync_to_async
from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.urls import set_script_prefix
from django.utils.log import log_response

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmops.settings")

logger = logging.getLogger(__name__)

django.setup(set_prefix=False)  # as get_asgi_application does before making Django's handler

GATEWAY_PATH_PREFIX = "/v1/"
FILES_PATH = f"{GATEWAY_PATH_PREFIX}files"


def _with_content_length(scope: dict, body_file) -> dict:
    """The scope of a request whose body came chunked (``Transfer-Encoding``), with a Content-Length that is the
    body's size, in place of any the client sent beside it: DRF, ``request_json``, Django's multipart parser and the
    ledger's request size read a body as long as that header says, so a chunked body was read as none and its fields
    reported missing. The handler has the whole body by now. Any other request is left as it came."""
    headers = scope["headers"]
    if not any(name == b"transfer-encoding" for name, _ in headers):
        return scope
    size = body_file.seek(0, os.SEEK_END)
    body_file.seek(0)
    kept = [(name, value) for name, value in headers if name != b"content-length"]
    return {**scope, "headers": [*kept, (b"content-length", str(size).encode())]}


class SiteASGIHandler(ASGIHandler):
    """Django's handler for everything but /v1, reading a chunked body as /v1 does."""

    def create_request(self, scope, body_file):
        return super().create_request(_with_content_length(scope, body_file), body_file)


site_application = SiteASGIHandler()


class GatewayASGIHandler(ASGIHandler):
    async def __call__(self, scope, receive, send):
        """Django's handler minus its per-request ``ThreadSensitiveContext``: that context gives each request a
        thread of its own for thread-sensitive sync calls (signals, ``response.close``) and starts another to
        join it, two thread starts per request. Without it those few short calls share asgiref's one thread."""
        await self.handle(scope, receive, send)

    async def handle(self, scope, receive, send):
        """Django's ``handle`` with the request signals sent on the event loop instead of through a worker thread
        each (two hops per request), and not sent at all for a direct route. Their receivers reset the calling
        thread's database connections, query log, caches and URLconf; /v1 uses none on the loop (its database work
        runs in worker threads, ``core.db``). A direct route's ``start`` runs once the body has arrived, before the
        request is built. A file upload declared far over the file limit is refused before its body is read."""
        refusal = _upload_refused_unread(scope)
        if refusal is not None:
            await self.send_response(refusal, send)
            return
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        set_script_prefix(get_script_prefix(scope))
        direct = DIRECT_ROUTES.get((scope["method"], scope["path"]))
        if direct is None:
            signals.request_started.send(sender=self.__class__, scope=scope)
        started = _start(direct, scope) if direct is not None else None
        try:
            await self._respond(scope, receive, send, body_file, direct, started)
        finally:
            if started is not None:
                # Awaited by the view by now, or not needed: a reply still to come is left unread.
                started.cancel()

    async def _respond(self, scope, receive, send, body_file, direct, started):
        request, error_response = self.create_request(scope, body_file)
        if request is None:
            body_file.close()
            await self.send_response(error_response, send)
            error_response.close()
            return

        async def process_request():
            if direct is None:
                response = await self.run_get_response(request)
            else:
                response = await self.run_direct(direct.view, request, started)
            try:
                await self.send_response(response, send)
            except asyncio.CancelledError:
                # The client left while its answer was being sent (or before its headers went out: a stream's body
                # never iterated is finished when the response is closed, below).
                pass
            except Exception:
                _close(response, direct)
                raise
            return response

        # As in Django: a client that disconnects cancels the view (a stream then records what was sent). Unlike
        # Django's, the handler waits on the view alone and leaves the listener cancelled without waiting for it:
        # no asyncio.wait and no extra turn of the loop per request.
        processing = asyncio.create_task(process_request())
        listening = asyncio.create_task(self.listen_for_disconnect(receive))
        listening.add_done_callback(lambda listener: _cancel_on_disconnect(listener, processing))
        try:
            response = await processing
        except asyncio.CancelledError:
            if asyncio.current_task().cancelling():
                raise
            if direct is None:
                signals.request_finished.send(sender=self.__class__)
        else:
            _close(response, direct)
        finally:
            listening.cancel()
            body_file.close()

    async def run_direct(self, view, request, started):
        """``run_get_response`` for a view reached without resolving its URL or sending ``request_started`` (whose
        receivers reset the loop thread's database connections and query log, which /v1 never uses): the hot path's.
        What Django does around every response is done here too."""
        response = await view(request, started)
        response._handler_class = self.__class__
        response._resource_closers.append(request.close)
        if response.status_code >= 400:
            await sync_to_async(log_response, thread_sensitive=False)(
                "%s: %s", response.reason_phrase, request.path, response=response, request=request
            )
        return response

    def create_request(self, scope, body_file):
        request, error_response = super().create_request(_with_content_length(scope, body_file), body_file)
        if error_response is not None:
            from llmops.gateway.last_resort import unreadable_request_response

            error_response = unreadable_request_response(error_response.status_code)
        return request, error_response

    def load_middleware(self, is_async=False):
        """No middleware; an exception no view handled is answered as the API's JSON error, not Django's page."""
        from llmops.gateway.last_resort import json_errors

        self._view_middleware = []
        self._template_response_middleware = []
        self._exception_middleware = []
        self._middleware_chain = json_errors(self._get_response_async)


def _upload_refused_unread(scope: dict):
    """The 413 for a file upload whose Content-Length is far over the file limit, answered before its body is read:
    Django's handler spools a whole body to disk before any view runs. None for every other request."""
    if scope["path"] != FILES_PATH or scope["method"] != "POST":
        return None
    length = next((value for name, value in scope["headers"] if name == b"content-length"), b"")
    if not length.isdigit():
        return None
    from llmops.gateway.batches.services import upload_size_check
    from llmops.gateway.errors import GatewayError
    from llmops.gateway.last_resort import json_error_response

    try:
        upload_size_check(size=int(length), request_body=True)
    except GatewayError as error:
        return json_error_response(error)
    return None


def _close(response, direct: "DirectRoute | None") -> None:
    """Close the response once it is sent or cannot be: what it holds is released (a stream's body that was never
    iterated finishes its request there)."""
    if direct is None:
        response.close()
    else:
        _close_without_request_finished(response)


def _close_without_request_finished(response) -> None:
    """``response.close()`` less its ``request_finished``, for a response of a direct view: as with
    ``request_started``, its receivers reset what such a view never uses on the loop (the thread's database
    connections, Django's caches, the URLconf), and sending it was about 2% of the loop's CPU per request."""
    for closer in response._resource_closers:
        with contextlib.suppress(Exception):
            closer()
    response._resource_closers.clear()
    response.closed = True


def _start(direct: "DirectRoute", scope: dict):
    """The route's work started ahead, or None when starting it failed: the view then does that work itself, and
    answers its failure as an error of the API."""
    try:
        return direct.start(scope)
    except Exception:
        logger.exception("%s %s: the work started ahead of the view failed", scope["method"], scope["path"])
        return None


def _cancel_on_disconnect(listener: asyncio.Task, processing: asyncio.Task) -> None:
    """The listener ended: the client disconnected (``RequestAborted``), so the view still running is cancelled. A
    listener cancelled by the handler does not. Anything else that ends it (Django's listener asserts that a server
    sends nothing but a disconnect after the body; ``receive`` may fail) is logged, and the view cancelled as for a
    disconnect."""
    if listener.cancelled():
        return
    error = listener.exception()
    if not isinstance(error, RequestAborted):
        logger.error("the disconnect listener ended without a disconnect", exc_info=error)
    processing.cancel()


def _build_site_application():
    from django.conf import settings

    if settings.SERVE_STATIC:
        from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler

        return ASGIStaticFilesHandler(site_application)
    return site_application


class DirectRoute(NamedTuple):
    """A view the handler calls without resolving its URL, as ``view(request, started)``: ``started`` is what
    ``start(scope)`` returned once the request's body arrived (work begun before the request is built, for the view
    to await), or None; it has a ``cancel()``, which the handler calls once the view is done."""

    view: Callable
    start: Callable[[dict], Any]


def _direct_routes() -> dict[tuple[str, str], DirectRoute]:
    """The views the handler calls without resolving their URL, by method and path, each inside the last resort
    that answers what it raises: only the chat completion, the request most traffic is. Every other method and path
    is resolved as usual (a GET there is refused by the same view, through the URLconf)."""
    from llmops.gateway.last_resort import json_errors
    from llmops.gateway.views import chat_completions, chat_completions_start

    return {
        ("POST", f"{GATEWAY_PATH_PREFIX}chat/completions"): DirectRoute(
            view=json_errors(chat_completions), start=chat_completions_start
        )
    }


gateway_application = GatewayASGIHandler()
DIRECT_ROUTES = _direct_routes()


def _load_then_freeze() -> None:
    """Load the semantic cache's model now rather than on the first cacheable request, then take everything loaded
    so far out of the garbage collector's reach. A full collection walks every tracked object: with Django, torch
    and the model that is about 500,000, and it held the event loop for about 200 ms (measured), the gateway's p99
    under load. Objects made while serving are collected as usual."""
    from routing.cache.embedders import configured_embedder

    configured_embedder()
    gc.collect()
    gc.freeze()


threading.Thread(target=_load_then_freeze, name="startup-load", daemon=True).start()
site_with_static = _build_site_application()


async def _lifespan(receive, send) -> None:
    """Startup has nothing to wait for. Shutdown comes once the open connections have ended: it waits for the work
    their requests left running (a disconnected client's ledger row, failed attempts' charges), then closes the
    connections kept open to providers."""
    from django.conf import settings

    from core.background import background_drain
    from routing.providers.base import upstream_client_close

    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await background_drain(settings.LLMOPS_SHUTDOWN_DRAIN_SECONDS)
            await upstream_client_close()
            await send({"type": "lifespan.shutdown.complete"})
            return


async def application(scope, receive, send):
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
    elif scope["type"] == "http" and scope["path"].startswith(GATEWAY_PATH_PREFIX):
        await gateway_application(scope, receive, send)
    else:
        await site_with_static(scope, receive, send)
