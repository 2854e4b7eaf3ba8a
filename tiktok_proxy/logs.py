"""What the proxy writes out: one key=value line per exchange, and the redaction every message goes through."""

from __future__ import annotations

import json
import logging
import re
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


def log_outcome(status: int, **fields: Any) -> None:
    level = logging.INFO if status < 400 else logging.WARNING if status < 500 else logging.ERROR
    log.log(level, logfmt(**fields, status=status))


def redact(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    return text


def logging_config(level: str) -> dict[str, Any]:
    """One stderr handler on the root logger, for this process and for every uvicorn worker."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": LOG_FORMAT}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stderr"}},
        "root": {"handlers": ["stderr"], "level": level},
    }
