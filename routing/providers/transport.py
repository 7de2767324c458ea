"""httpx's request and response types over aiohttp's connection pool, for the calls to providers.

Adapters build and read ``httpx`` requests and responses; the connections underneath are aiohttp's. Profiled
at concurrency 32, httpcore's pool spent about a third of the gateway's event loop on each request (it polls every
idle connection's socket to see whether it expired, through anyio's attribute lookups); aiohttp's connector hands
out a kept-alive connection without that scan. Failures are raised as the httpx exceptions the adapters catch.

Kept by hand rather than httpx-aiohttp 0.2.0's ``AiohttpTransport`` on the same session (#16). The library maps
``aiohttp.ClientConnectionError``, the base of ``ClientConnectorError``, to ``httpx.ConnectTimeout``: a refused
connection or a failed TLS verification became a 504 ``upstream_timeout`` instead of a 502
``upstream_connection_error`` (four tests fail). And it was no faster: ``bench/gateway_bench.py --scenarios unique
stream --concurrency 8 32 --sustained-requests 0``, five runs of each interleaved, median req/s by hand / library:
miss 139 / 163 at concurrency 8 and 235 / 173 at 32, streaming 151 / 142 and 182 / 216, within the noise of this
shared machine (docs/performance.md, "Libraries measured (#16)").
"""

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import httpx
from aiohttp.client_reqrep import ClientRequest
from aiohttp.helpers import get_env_proxy_for_url
from yarl import URL

from core.event_loops import start_eagerly


def _timeout(request: httpx.Request) -> aiohttp.ClientTimeout:
    """httpx's per-request timeouts (connect, read, pool) as aiohttp's; read applies to each read, as in httpx."""
    timeouts = request.extensions.get("timeout") or {}
    connect = timeouts.get("connect")
    pool = timeouts.get("pool")
    return aiohttp.ClientTimeout(
        total=None,
        connect=None if connect is None or pool is None else connect + pool,
        sock_connect=connect,
        sock_read=timeouts.get("read"),
    )


def _as_httpx_error(exc: BaseException, request: httpx.Request, *, reading: bool) -> httpx.TransportError:
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(str(exc) or "connect timeout", request=request)
    if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        return httpx.ReadTimeout(str(exc) or "read timeout", request=request)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return httpx.ConnectError(str(exc), request=request)
    if reading or isinstance(exc, aiohttp.ServerDisconnectedError):
        return httpx.RemoteProtocolError(str(exc) or exc.__class__.__name__, request=request)
    return httpx.NetworkError(str(exc) or exc.__class__.__name__, request=request)


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request):
        self._response = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _as_httpx_error(exc, self._request, reading=True) from exc

    async def aclose(self) -> None:
        # A body read to the end returns its connection to the pool; one cut short closes it.
        self._response.release()


class AiohttpTransport(httpx.AsyncBaseTransport):
    """One aiohttp session per transport, and one transport per event loop (``base.upstream_transport``)."""

    def __init__(self, *, max_connections: int):
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._proxies: dict[tuple[str, str], tuple[URL | None, aiohttp.BasicAuth | None]] = {}

    def _client_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # aiohttp writes a request's body (and its buffered headers) in a task of its own, which it starts
            # eagerly from Python 3.12 on; on 3.11 the request left a loop turn later, behind every callback then
            # ready (at concurrency 8 about 0.4 ms of the gateway's added p50, docs/performance.md).
            start_eagerly(asyncio.get_running_loop(), ClientRequest.write_bytes.__code__)
            # httpx's TLS context: certifi's CA bundle, or SSL_CERT_FILE / SSL_CERT_DIR when set.
            connector = aiohttp.TCPConnector(
                limit=self._max_connections, limit_per_host=0, ttl_dns_cache=300, ssl=httpx.create_ssl_context()
            )
            # Bodies go through as bytes (httpx's Response decodes content-encoding); requests carry their own headers.
            # No cookie jar: the session is shared by every tenant, so a cookie a provider sets must not ride on the
            # next request. The environment's proxies are applied by `_proxy_for`, not by trust_env.
            self._session = aiohttp.ClientSession(
                connector=connector,
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding"),
            )
        return self._session

    def _proxy_for(self, url: httpx.URL) -> tuple[URL | None, aiohttp.BasicAuth | None]:
        """HTTP(S)_PROXY and NO_PROXY from the environment (and the proxy's .netrc credentials), as with httpx's
        client, read once per scheme and host: aiohttp's trust_env reads them again on every request, on an
        executor thread (a thread hop and a .netrc parse per provider call)."""
        key = (url.scheme, url.host)
        found = self._proxies.get(key)
        if found is None:
            try:
                found = get_env_proxy_for_url(URL(str(url)))
            except LookupError:
                found = (None, None)
            self._proxies[key] = found
        return found

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self.send(request, stream=True)

    async def send(self, request: httpx.Request, *, stream: bool) -> httpx.Response:
        """The response; unless ``stream``, with its body read (and the connection back in the pool), which spares
        httpx's asynchronous reading of it."""
        proxy, proxy_auth = self._proxy_for(request.url)
        try:
            response = await self._client_session().request(
                request.method,
                str(request.url),
                headers=request.headers.multi_items(),
                data=request.content or None,
                timeout=_timeout(request),
                allow_redirects=False,
                proxy=proxy,
                proxy_auth=proxy_auth,
            )
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _as_httpx_error(exc, request, reading=False) from exc
        headers = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in response.raw_headers]
        if stream:
            return httpx.Response(
                status_code=response.status, headers=headers, stream=_ResponseStream(response, request), request=request
            )
        try:
            content = await response.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _as_httpx_error(exc, request, reading=True) from exc
        finally:
            response.release()
        return httpx.Response(status_code=response.status, headers=headers, content=content, request=request)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
