"""What the proxy writes out: one key=value line per exchange, and the redaction every message goes through."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterable
from typing import Any

log = logging.getLogger("tiktok_proxy")

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
PLAIN_VALUE = re.compile(r"[A-Za-z0-9_.,:/@+-]+")


def logfmt(**fields: Any) -> str:
    """key=value pairs; any value that is not a plain word is JSON-quoted, so CR/LF cannot forge lines."""
    out = []
    for key, value in fields.items():
        if value is None:
            text = "-"
        elif isinstance(value, (int, float)):  # bool included: always plain
            text = str(value)
        else:
            text = str(value)[:200]
            if not PLAIN_VALUE.fullmatch(text):
                text = json.dumps(text)
        out.append(f"{key}={text}")
    return " ".join(out)


def log_event(level: int, logger: logging.Logger = log, **fields: Any) -> None:
    """One line of fields: key=value text, with the fields kept on the record for LOG_FORMAT=json."""
    if logger.isEnabledFor(level) and not (logger is log and _written_directly(level, fields)):
        logger.log(level, logfmt(**fields), extra={"fields": fields})


class _Stamp:
    """What Formatter.formatTime reads of a LogRecord: when it was made."""

    def __init__(self, nanoseconds: int) -> None:
        self.created = nanoseconds / 1e9
        self.msecs = (nanoseconds % 1_000_000_000) // 1_000_000 + 0.0


def _written_directly(level: int, fields: dict[str, Any]) -> bool:
    """Write the proxy's line straight to the stream, the same text as logging would write, when logging is set up
    as the proxy sets it up itself: one plain stream handler on the root, with the proxy's format (LOG_FORMAT or
    JSONFormatter), no filter, and no handler of the proxy's logger's own. That skips the LogRecord and the handler
    chain, about a sixth of the CPU of an exchange (docs/performance.md). Anything else, a handler or a filter a
    user configured (or pytest's capture), gets the line through logging as usual: False."""
    root = logging.root
    if log.handlers or log.filters or not log.propagate or root.filters or len(root.handlers) != 1:
        return False
    handler = root.handlers[0]
    chosen = handler.formatter
    if type(handler) is not logging.StreamHandler or handler.filters or level < handler.level or chosen is None:
        return False
    if type(chosen) is JSONFormatter:
        stamp = chosen.formatTime(_Stamp(time.time_ns()))  # type: ignore[arg-type]
        line = json.dumps(_json_entry(stamp, logging.getLevelName(level), fields), ensure_ascii=False)
    elif type(chosen) is logging.Formatter and chosen._fmt == LOG_FORMAT and chosen.datefmt is None:
        asctime = chosen.formatTime(_Stamp(time.time_ns()))  # type: ignore[arg-type]
        line = f"{asctime} {logging.getLevelName(level)} {log.name} {logfmt(**fields)}"
    else:
        return False
    try:
        with handler.lock:  # type: ignore[union-attr]
            handler.stream.write(line + handler.terminator)
            handler.flush()
    except Exception:
        return False  # logging then tries, and reports the failure its own way
    return True


def log_outcome(status: int, after_status: dict[str, Any] | None = None, **fields: Any) -> None:
    """One exchange's line, at a level by its status. `after_status`: fields that come after status, so that
    fields added later never move the ones that readers (and tests) expect in order."""
    level = logging.INFO if status < 400 else logging.WARNING if status < 500 else logging.ERROR
    log_event(level, **fields, status=status, **(after_status or {}))


class JSONFormatter(logging.Formatter):
    """LOG_FORMAT=json: one JSON object per line, with the same fields as the key=value line.

    json.dumps escapes CR and LF, so no value can forge a line here either."""

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry = _json_entry(self.formatTime(record), record.levelname, fields, record.name)
        else:  # a line from uvicorn or a library: its message as it is
            entry = {"time": self.formatTime(record), "level": record.levelname, "logger": record.name}
            entry["message"] = record.getMessage()
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def _json_entry(time_text: str, level_name: str, fields: dict[str, Any], logger: str = log.name) -> dict[str, Any]:
    entry: dict[str, Any] = {"time": time_text, "level": level_name, "logger": logger}
    entry.update((key, _json_value(value)) for key, value in fields.items())
    return entry


def _json_value(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return str(value)[:200]  # the same bound as the key=value line


def formatter(log_format: str) -> logging.Formatter:
    return JSONFormatter() if log_format == "json" else logging.Formatter(LOG_FORMAT)


def use_format_everywhere(log_format: str) -> None:
    """Give every handler already set up (uvicorn's own, under `uvicorn proxy:app`) this format, so that a log
    platform gets one format from the first line to the last."""
    if log_format != "json":
        return
    for name in ("", "uvicorn", "uvicorn.error", "uvicorn.access"):
        for handler in logging.getLogger(name).handlers:
            handler.setFormatter(JSONFormatter())


# config.MIN_SECRET_LENGTH: no real secret is shorter, and config.py warns about one that is.
REAL_SECRET_LENGTH = 16


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` with each secret replaced by [redacted]. A real one (REAL_SECRET_LENGTH or more) wherever it appears:
    it cannot be there by chance. A shorter one only where it stands as a whole value, never letters inside a
    word: a one-letter secret must not garble the message. The longest first, so that none is left half done."""
    for secret in sorted(filter(None, secrets), key=len, reverse=True):
        if len(secret) >= REAL_SECRET_LENGTH:
            text = text.replace(secret, "[redacted]")
        else:
            text = re.sub(rf"(?<!\w){re.escape(secret)}(?!\w)", "[redacted]", text)
    return text


def logging_config(level: str, log_format: str = "plain") -> dict[str, Any]:
    """One stderr handler on the root logger, for this process and for every uvicorn worker."""
    chosen = {"()": JSONFormatter} if log_format == "json" else {"format": LOG_FORMAT}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"chosen": chosen},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "chosen", "stream": "ext://sys.stderr"}},
        "root": {"handlers": ["stderr"], "level": level},
    }
