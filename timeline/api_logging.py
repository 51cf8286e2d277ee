"""Log formats of the server: `text` (one readable line) or `json` (one JSON object a line).

The access line of each request (`timeline.access`, see `timeline.api.AccessLog`) carries
its fields in the record (`record.access`). As text it is the readable line: method,
path, redacted query, status, duration and the token's name. As JSON it is those fields
without the path: time, level, logger, `request_id`, `method`, `route` (the route's
template: `/v1/students/{student_id}`, no student id), `status`, `duration_ms`, `token`
(the token's *name*, never the token) — and never the query. Other records are
`{"time", "level", "logger", "message"}` (plus `exception` with a traceback).

`log_config(fmt)` is the `logging.config.dictConfig` of either format for uvicorn's
`log_config` (applied in every worker process) and for `TIMELINE_LOG_FORMAT`.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

FORMAT_SETTING = "TIMELINE_LOG_FORMAT"
FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, UTF-8, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as JSON: its structured access fields, else its message."""
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        access = getattr(record, "access", None)
        if isinstance(access, dict):
            line.update(access)
        else:
            line["message"] = record.getMessage()
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def log_config(fmt: str, level: str = "INFO") -> dict[str, Any]:
    """A dictConfig: every logger (uvicorn's too) to stderr in `fmt`; access lines on."""
    if fmt not in FORMATS:
        raise ValueError(f"log format: one of {', '.join(FORMATS)}")
    formatter: dict[str, Any] = (
        {"()": "timeline.api_logging.JsonFormatter"} if fmt == "json" else {"format": TEXT_FORMAT}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"timeline": formatter},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "timeline",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["stderr"], "level": "WARNING"},
        "loggers": {
            "uvicorn": {"handlers": ["stderr"], "level": level, "propagate": False},
            "uvicorn.error": {"level": level},
            # The app writes its own line per request (redacted): uvicorn's stays off.
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
            "timeline.access": {"level": "INFO"},
        },
    }
