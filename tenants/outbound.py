"""SSRF defence for URLs the platform calls on a tenant's or admin's behalf (provider base URLs, alert webhooks).

Only http and https; no credentials in the URL; never a cloud metadata endpoint; and no loopback, private,
link-local or otherwise internal address unless LLMOPS_ALLOW_PRIVATE_UPSTREAMS is on (the embedded demo's mock
upstream is on 127.0.0.1). A host name is resolved and every address it resolves to is checked; a name that does
not resolve passes (the call will fail), which leaves DNS rebinding to the network's egress rules.
"""

import ipaddress
import socket
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError

ALLOWED_SCHEMES = frozenset({"http", "https"})
METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata", "instance-data", "instance-data.ec2.internal"})
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(address)
    for address in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200")
)
SHARED_ADDRESS_SPACE = ipaddress.ip_network("100.64.0.0/10")
LOCAL_HOST_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def _is_internal(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or (isinstance(address, ipaddress.IPv4Address) and address in SHARED_ADDRESS_SPACE)
    )


def _resolved_addresses(host: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError):
        return []
    return [ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos]


def outbound_url_errors(url: str, *, allow_private: bool | None = None) -> list[str]:
    if allow_private is None:
        allow_private = settings.LLMOPS_ALLOW_PRIVATE_UPSTREAMS
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        return ["The URL cannot be parsed."]
    if parts.scheme.lower() not in ALLOWED_SCHEMES:
        return ["The URL must start with http:// or https://."]
    if not host:
        return ["The URL must name a host."]
    if parts.username is not None or parts.password is not None:
        return ["Credentials do not belong in the URL; store them as the credential or signing secret."]
    host = host.rstrip(".").lower()
    if host in METADATA_HOSTS:
        return [f"{host} is a cloud metadata service."]
    addresses = _resolved_addresses(host)
    if any(address in METADATA_ADDRESSES for address in addresses):
        return [f"{host} is a cloud metadata address."]
    if not allow_private and (host in LOCAL_HOST_NAMES or any(_is_internal(address) for address in addresses)):
        return [
            f"{host} is a loopback, private or link-local address; set LLMOPS_ALLOW_PRIVATE_UPSTREAMS=true to allow it."
        ]
    return []


def outbound_url_validate(url: str, *, field: str) -> None:
    """Raise a ValidationError on `field` when the platform must not call `url`."""
    if errors := outbound_url_errors(url):
        raise ValidationError({field: errors})
