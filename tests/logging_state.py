"""Process-wide logging state that ``telemetry.logs.configure`` changes, saved and put back.

``configure`` sets module switches (``logging._srcfile``...), the root logger's handlers and
level, and named loggers' handlers, propagation and levels; a test that calls it (directly or by
running the server's own set-up) restores all of it with the ``logging_state`` fixture
(tests/conftest.py), so other tests see logging as it was.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from omnirelay.telemetry import logs


def _pytest_handler(handler: logging.Handler) -> bool:
    """pytest's own capture handlers, which it adds and removes around each test phase."""
    return type(handler).__module__.startswith("_pytest")


@dataclass
class _LoggerState:
    level: int
    propagate: bool
    handlers: list[logging.Handler]


class LoggingState:
    """What ``logs.configure`` changes: module switches, root and named loggers; restorable."""

    def __init__(self) -> None:
        self._switches = (
            logging._srcfile,
            logging.logThreads,
            logging.logProcesses,
            logging.logMultiprocessing,
        )
        root = logging.getLogger()
        self._root_level = root.level
        # pytest adds and removes its own capture handlers around each test phase: not ours to keep.
        self._root_handlers = [h for h in root.handlers if not _pytest_handler(h)]
        self._loggers: dict[str, _LoggerState] = {}
        for name in ("omnirelay", logs.ACCESS_LOGGER):
            self.remember(name)

    def remember(self, name: str) -> None:
        """Save a named logger's state before configure touches it (its ``levels`` entries)."""
        if name and name not in self._loggers:
            found = logging.getLogger(name)
            self._loggers[name] = _LoggerState(found.level, found.propagate, list(found.handlers))

    def restore(self) -> None:
        (logging._srcfile, logging.logThreads, logging.logProcesses, logging.logMultiprocessing) = (
            self._switches
        )
        root = logging.getLogger()
        # pytest's handlers of the current phase stay; configure's goes; any earlier ones come back.
        root.handlers[:] = [*(h for h in root.handlers if _pytest_handler(h)), *self._root_handlers]
        root.setLevel(self._root_level)
        for name, state in self._loggers.items():
            found = logging.getLogger(name)
            found.handlers[:] = state.handlers
            found.propagate = state.propagate
            found.setLevel(state.level)  # also clears the loggers' isEnabledFor caches
