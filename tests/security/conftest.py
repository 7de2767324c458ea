import io
import logging

import pytest

from core.secret_references import secret_references_forget
from llmops.log_redaction import RedactingFilter
from tenants.payload_logs import payload_log_policies_forget


@pytest.fixture
def app_log():
    """What the configured log handlers write (LOGGING in settings), at DEBUG, for the duration of a test."""
    root = logging.getLogger()
    handlers = [handler for handler in root.handlers if any(isinstance(f, RedactingFilter) for f in handler.filters)]
    assert handlers, "no root handler carries the redacting filter"
    buffer = io.StringIO()
    previous_streams = [handler.setStream(buffer) for handler in handlers]
    previous_level = root.level
    root.setLevel(logging.DEBUG)
    yield buffer
    root.setLevel(previous_level)
    for handler, stream in zip(handlers, previous_streams, strict=True):
        handler.setStream(stream)


@pytest.fixture(autouse=True)
def forget_process_caches():
    payload_log_policies_forget()
    secret_references_forget()
    yield
    payload_log_policies_forget()
    secret_references_forget()
