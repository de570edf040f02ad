"""Log setup: one JSON object per line in production, readable text in development.

Every record carries the request id of the call it belongs to. Nothing logs
per token: the hot path stays silent unless something goes wrong.
"""

from __future__ import annotations

import json
import logging
import sys
import time

from omnirelay.config.schema import LoggingSettings
from omnirelay.interceptors.edge import current_request_id


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = current_request_id()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = getattr(record, "request_id", "")
        if rid:
            entry["request_id"] = rid
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure(settings: LoggingSettings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RequestIdFilter())
    if settings.format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s %(message)s"))
    root = logging.getLogger("omnirelay")
    root.handlers[:] = [handler]
    root.setLevel(settings.level)
    root.propagate = False
    # Libraries (asyncpg's reconnect warnings, grpc, httpx) log through the same handler, so every
    # line has the configured format; only their warnings and worse.
    libraries = logging.getLogger()
    libraries.handlers[:] = [handler]
    libraries.setLevel(logging.WARNING)
