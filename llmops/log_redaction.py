"""A logging filter that redacts every record, so no handler ever writes a prompt's secrets or a credential."""

import logging

from core.redaction import redact


class RedactingFilter(logging.Filter):
    """Formats the message with its args, redacts it, and does the same to a traceback, before any handler runs.

    Installed on the handlers (a filter on a logger does not see records propagated from child loggers).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            message = f"{record.msg!r} {record.args!r}"
        record.msg = redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True
