"""SSRF defence for URLs the platform calls on a tenant's or admin's behalf (provider base URLs, alert webhooks, job
callbacks).

Only http and https; no credentials in the URL; never a cloud metadata endpoint; and no loopback, private,
link-local or otherwise internal address unless LLMOPS_ALLOW_PRIVATE_UPSTREAMS is on (the embedded demo's mock
upstream is on 127.0.0.1) or the address and port are in LLMOPS_OUTBOUND_ALLOWLIST. A host name is resolved and every
address it resolves to is checked. When a URL is saved, a name that does not resolve passes (the call will fail);
when the platform sends to a tenant-given URL (`outbound_post`), the name is resolved again, every address checked,
and the connection made to the checked address, so a DNS answer that changed since (rebinding) reaches nothing
internal. Redirects are never followed. A send ends within a total deadline, however slowly the other end answers,
and reads only the first few KB of the answer.
"""

import asyncio
import ipaddress
import logging
import socket
from contextlib import aclosing
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import httpx
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured, ValidationError

logger = logging.getLogger(__name__)

ALLOWED_SCHEMES = frozenset({"http", "https"})
METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata", "instance-data", "instance-data.ec2.internal"})
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(address)
    for address in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200")
)
SHARED_ADDRESS_SPACE = ipaddress.ip_network("100.64.0.0/10")
LOCAL_HOST_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})
# httpx's timeout bounds each connect, write and read alone: an endpoint that trickles its answer a byte at a time would
# hold the worker for as long as it liked without this bound on the whole send.
OUTBOUND_DEADLINE_SECONDS = 15.0
# The status decides; the first few KB of an answer say why it refused. The rest is never read (nor held in memory).
OUTBOUND_ANSWER_MAX_BYTES = 4096


def _is_internal(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or (isinstance(address, ipaddress.IPv4Address) and address in SHARED_ADDRESS_SPACE)
    )


def _unmapped(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """::ffff:169.254.169.254 is 169.254.169.254."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _resolved_addresses(host: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        return [_unmapped(ipaddress.ip_address(host))]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError):
        return []
    return [_unmapped(ipaddress.ip_address(info[4][0].split("%", 1)[0])) for info in infos]


@dataclass(frozen=True, slots=True)
class AllowedDestination:
    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    first_port: int
    last_port: int

    def admits(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> bool:
        return (
            address.version == self.network.version
            and address in self.network
            and self.first_port <= port <= self.last_port
        )


def allowed_destination_parse(entry: str) -> AllowedDestination:
    """`ADDRESS[/PREFIX]:PORT[-PORT]`, an IPv6 address in brackets: `127.0.0.1:9000-9100`, `[::1]:8443`,
    `10.0.0.0/8:443`."""
    address, separator, ports = entry.strip().rpartition(":")
    first, _, last = ports.partition("-")
    try:
        network = ipaddress.ip_network(address.strip("[]"), strict=False)
        first_port, last_port = int(first), int(last or first)
    except ValueError:
        raise ImproperlyConfigured(
            f"LLMOPS_OUTBOUND_ALLOWLIST: cannot read {entry!r} as ADDRESS[/PREFIX]:PORT[-PORT]"
        ) from None
    if not separator or not 1 <= first_port <= last_port <= 65535:
        raise ImproperlyConfigured(f"LLMOPS_OUTBOUND_ALLOWLIST: cannot read {entry!r} as ADDRESS[/PREFIX]:PORT[-PORT]")
    return AllowedDestination(network=network, first_port=first_port, last_port=last_port)


def _allow_listed(address: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> bool:
    return any(allowed_destination_parse(entry).admits(address, port) for entry in settings.LLMOPS_OUTBOUND_ALLOWLIST)


@dataclass(frozen=True, slots=True)
class CheckedUrl:
    """A URL that passed the check, with the addresses its host resolved to then (empty if it did not resolve)."""

    url: str
    host: str
    port: int
    addresses: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]


def _checked(url: str, *, allow_private: bool | None) -> tuple[CheckedUrl | None, list[str]]:
    if allow_private is None:
        allow_private = settings.LLMOPS_ALLOW_PRIVATE_UPSTREAMS
    try:
        parts = urlsplit(url)
        host = parts.hostname
        port = parts.port
    except ValueError:
        return None, ["The URL cannot be parsed."]
    if parts.scheme.lower() not in ALLOWED_SCHEMES:
        return None, ["The URL must start with http:// or https://."]
    if not host:
        return None, ["The URL must name a host."]
    if parts.username is not None or parts.password is not None:
        return None, ["Credentials do not belong in the URL; store them as the credential or signing secret."]
    host = host.rstrip(".").lower()
    port = port or (443 if parts.scheme.lower() == "https" else 80)
    if host in METADATA_HOSTS:
        return None, [f"{host} is a cloud metadata service."]
    addresses = tuple(_resolved_addresses(host))
    if any(address in METADATA_ADDRESSES for address in addresses):
        return None, [f"{host} is a cloud metadata address."]
    internal = (host in LOCAL_HOST_NAMES and not addresses) or any(
        _is_internal(address) and not _allow_listed(address, port) for address in addresses
    )
    if not allow_private and internal:
        return None, [
            f"{host} is a loopback, private or link-local address; set LLMOPS_ALLOW_PRIVATE_UPSTREAMS=true to allow it."
        ]
    return CheckedUrl(url=url, host=host, port=port, addresses=addresses), []


def outbound_url_errors(url: str, *, allow_private: bool | None = None) -> list[str]:
    return _checked(url, allow_private=allow_private)[1]


def outbound_url_validate(url: str, *, field: str) -> None:
    """Raise a ValidationError on `field` when the platform must not call `url`."""
    if errors := outbound_url_errors(url):
        raise ValidationError({field: errors})


class OutboundRefused(Exception):
    """The URL, as resolved now, is one the platform must not call; nothing was sent."""


def _pinned(checked: CheckedUrl) -> tuple[str, dict[str, str], dict]:
    """The URL with its host replaced by the checked address, the Host header, and TLS's server name."""
    parts = urlsplit(checked.url)
    address = checked.addresses[0]
    literal = f"[{address}]" if address.version == 6 else str(address)
    default_port = 443 if parts.scheme.lower() == "https" else 80
    netloc = literal if checked.port == default_port else f"{literal}:{checked.port}"
    host_header = parts.netloc.rpartition("@")[2]
    extensions = {"sni_hostname": checked.host} if parts.scheme.lower() == "https" else {}
    return urlunsplit(parts._replace(netloc=netloc)), {"Host": host_header}, extensions


@dataclass(frozen=True, slots=True)
class OutboundAnswer:
    status_code: int
    text: str  # the answer's first OUTBOUND_ANSWER_MAX_BYTES, decoded as UTF-8


def outbound_post(
    url: str,
    *,
    content: bytes,
    headers: dict[str, str],
    timeout: float,
    deadline: float = OUTBOUND_DEADLINE_SECONDS,
) -> OutboundAnswer:
    """POST to a URL a tenant gave (a webhook, a callback): checked again now, sent to the address that was checked,
    redirects not followed (a 3xx is the answer). `timeout` bounds each connect, write and read, `deadline` the whole
    send. Raises OutboundRefused before sending anything the check refuses, httpx.HTTPError when the call fails or
    takes longer than `deadline` (httpx.TimeoutException)."""
    checked, errors = _checked(url, allow_private=None)
    if checked is None or not checked.addresses:
        logger.warning("outbound POST refused: %s", "; ".join(errors) or "the host does not resolve")
        raise OutboundRefused("; ".join(errors) or "the host does not resolve")
    target, host_header, extensions = _pinned(checked)
    # The answer's first bytes are read as sent: not compressed, so they say something and cannot inflate.
    headers = {**headers, **host_header, "Accept-Encoding": "identity"}
    # A loop of its own, so the deadline cancels the send wherever it is stuck (the caller is a sync task).
    with asyncio.Runner(loop_factory=asyncio.new_event_loop) as runner:
        return runner.run(_post_within(target, content, headers, extensions, timeout=timeout, deadline=deadline))


async def _post_within(
    target: str, content: bytes, headers: dict[str, str], extensions: dict, *, timeout: float, deadline: float
) -> OutboundAnswer:
    try:
        async with asyncio.timeout(deadline), httpx.AsyncClient(timeout=timeout, follow_redirects=False) as client:
            request = client.build_request("POST", target, content=content, headers=headers, extensions=extensions)
            response = await client.send(request, stream=True)
            try:
                head = await _answer_head(response)
            finally:
                await response.aclose()
    except TimeoutError:
        raise httpx.TimeoutException(f"no complete answer within {deadline:g} s") from None
    return OutboundAnswer(status_code=response.status_code, text=head.decode(errors="replace"))


async def _answer_head(response: httpx.Response) -> bytes:
    head = bytearray()
    async with aclosing(response.aiter_raw()) as chunks:
        async for chunk in chunks:
            head += chunk
            if len(head) >= OUTBOUND_ANSWER_MAX_BYTES:
                break
    return bytes(head[:OUTBOUND_ANSWER_MAX_BYTES])
