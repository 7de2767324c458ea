"""What the browser-facing site (admin, management API, dashboard) answers for an exception no view handled."""

import sys

from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse
from django.views.defaults import server_error as django_server_error

from llmops.gateway.errors import OUTAGE_RETRY_AFTER_SECONDS


def server_error(request: HttpRequest) -> HttpResponse:
    """Django's 500 page, except while the database cannot be reached (an outage, or every pooled connection busy
    past DB_POOL_TIMEOUT): that is a 503 with Retry-After, which clients and load balancers retry. Under /api/ the
    JSON errors middleware turns either into the management API's error shape."""
    if isinstance(sys.exc_info()[1], OperationalError | InterfaceError):
        response = HttpResponse(
            "The database cannot be reached right now. Try again in a few seconds.\n",
            status=503,
            content_type="text/plain; charset=utf-8",
        )
        response["Retry-After"] = str(OUTAGE_RETRY_AFTER_SECONDS)
        return response
    return django_server_error(request)
