"""The daemons' logging: level, format, and the journal's conventions, set up in one place.

Three shapes of line, all on standard error:

- text (the default): ``2025-01-01 12:00:00,000 INFO veilgate.gateway: gateway up ...``;
- under systemd's journal (``JOURNAL_STREAM`` names standard error's device and inode, as
  systemd.exec(5) documents): ``<6>veilgate.gateway: gateway up ...``, the syslog priority first as
  sd-daemon(3) describes, so ``journalctl -p warning`` filters, and no timestamp (the journal
  keeps its own);
- JSON lines (``--log-format json`` or ``log_format = "json"``): one object per line with
  ``time`` (left out under the journal), ``level``, ``logger`` and ``message``, prefixed with the
  priority under the journal too.

Nothing else from a record reaches a line (no arguments, no extra fields), so what the code logs
at a level is exactly what an operator sees: at ``info`` no key, credential, source address or
tunnel address (see the daemons' modules).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Mapping
from typing import IO

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")
DEFAULT_LEVEL = "info"
DEFAULT_FORMAT = "text"

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_PRIORITY = {  # syslog priorities (sd-daemon.h: SD_ERR ... SD_DEBUG)
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


def priority(levelno: int) -> int:
    """The syslog priority of a logging level (a level between two takes the more severe one)."""
    for level, prio in sorted(_PRIORITY.items(), reverse=True):
        if levelno >= level:
            return prio
    return 7


def under_journal(environ: Mapping[str, str], stream: IO[str]) -> bool:
    """Whether ``stream`` is connected to the journal: JOURNAL_STREAM is ``device:inode`` of it."""
    value = environ.get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError):  # no file descriptor (a test's StringIO), or closed
        return False
    return st.st_dev == int(device) and st.st_ino == int(inode)


class JournalFormatter(logging.Formatter):
    """Each line of a record prefixed with its syslog priority; no timestamp."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{priority(record.levelno)}>"
        # A traceback spans lines: the journal takes each line as an entry, each keeps the priority.
        return "\n".join(prefix + line for line in self.inner.format(record).split("\n"))


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (unless the journal stamps it), level, logger, message."""

    def __init__(self, *, timestamps: bool = True) -> None:
        super().__init__()
        self.timestamps = timestamps

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {}
        if self.timestamps:
            entry["time"] = self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z"
        entry["level"] = record.levelname.lower()
        entry["logger"] = record.name
        entry["message"] = record.getMessage()
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def formatter(fmt: str, journal: bool) -> logging.Formatter:
    if fmt == "json":
        inner: logging.Formatter = JsonFormatter(timestamps=not journal)
        if not journal:
            inner.converter = time.gmtime
    else:
        inner = logging.Formatter("%(name)s: %(message)s" if journal else TEXT_FORMAT)
    return JournalFormatter(inner) if journal else inner


def setup(
    level: str | None = None,
    fmt: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    stream: IO[str] | None = None,
) -> logging.Handler:
    """Send log records to standard error in the given level and format (None: the defaults).

    Called again (once the configuration file is read), it replaces what it set up before. The
    ``veilgate`` loggers take ``level``; other libraries' loggers stay at ``info`` or above.
    """
    level = (level or DEFAULT_LEVEL).upper()
    stream = stream if stream is not None else sys.stderr
    # No line shows where a record was made, nor its thread or process: spare every record
    # collecting them (the logging documentation's "Optimization"; a quarter of a record's cost).
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    journal = under_journal(os.environ if environ is None else environ, stream)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter(fmt or DEFAULT_FORMAT, journal))
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_veilgate", False)]:
        root.removeHandler(old)
    handler._veilgate = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    numeric = logging.getLevelNamesMapping()[level]
    root.setLevel(max(numeric, logging.INFO))
    logging.getLogger("veilgate").setLevel(numeric)
    return handler


__all__ = ["FORMATS", "LEVELS", "JournalFormatter", "JsonFormatter", "priority", "setup", "under_journal"]
