"""Who sent a request, for login throttling (django-axes) and anything else that needs the client's address.

Only the peer address (REMOTE_ADDR) is trusted unless LLMOPS_TRUSTED_PROXY_COUNT says how many proxies stand in front:
then the client is the address the outermost of them saw, the Nth entry from the right of X-Forwarded-For (each proxy
appends the address it received the request from; entries further left are whatever the client wrote). uvicorn must
run with --no-proxy-headers so that REMOTE_ADDR is the peer and not already taken from X-Forwarded-For.
"""

import ipaddress

from django.conf import settings
from django.http import HttpRequest


def client_ip(request: HttpRequest) -> str | None:
    peer = request.META.get("REMOTE_ADDR")
    proxies = settings.LLMOPS_TRUSTED_PROXY_COUNT
    if proxies <= 0:
        return peer
    forwarded = [entry.strip() for entry in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if entry.strip()]
    if len(forwarded) < proxies:  # it did not come through every proxy
        return peer
    try:
        return str(ipaddress.ip_address(forwarded[-proxies]))
    except ValueError:
        return peer
