"""Driver log records without user data: the arguments of SQL drivers' records, redacted.

With DEBUG logging on, aiosqlite logs every call it runs with its SQL parameters, and
SQLAlchemy's engine logger logs result rows (``Row %r``); both are the user's field values.
The library's engines also hide statement parameters (``hide_parameters=True``); the filters
here take care of the rest: each argument of such a record is replaced by its type (a call by
its function's name), so the record still says what ran and when, without the data.
"""

from __future__ import annotations

import functools
import logging
import re

__all__ = ["ENGINE_LOGGING_NAME", "redact_log_arguments"]

# The library's engines log under sqlalchemy.engine.Engine.pydantic_toast, so the filter leaves
# an application's own engines (sqlalchemy.engine.Engine) alone.
ENGINE_LOGGING_NAME = "pydantic_toast"
# SQLAlchemy's statement-cache notes ("[generated in 0.0001s]"): kept, they hold no data.
_CACHE_NOTE = re.compile(r"^(generated in|cached since|no key|raw sql|dialect|insertmanyvalues)")


class _RedactArguments(logging.Filter):
    """Replaces every argument of a record that may hold data by its type."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            args = record.args if isinstance(record.args, tuple) else (record.args,)
            record.args = tuple(_shape_of(arg) for arg in args)
        return True


def _shape_of(value: object) -> object:
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        return value if _CACHE_NOTE.match(value) else "<str>"
    if isinstance(value, functools.partial):
        value = value.func
    name = getattr(value, "__qualname__", None)
    return f"<{name}>" if isinstance(name, str) else f"<{type(value).__name__}>"


def redact_log_arguments(logger_name: str) -> None:
    """Install the filter on ``logger_name`` once (filters act on that logger's own records)."""
    logger = logging.getLogger(logger_name)
    if not any(isinstance(known, _RedactArguments) for known in logger.filters):
        logger.addFilter(_RedactArguments())
