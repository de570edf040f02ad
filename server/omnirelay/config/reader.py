"""Typed reads from the raw settings mapping, collecting every problem instead of stopping at the first.

Validation and conversion are one walk over the raw mapping so that every
problem is found in a single run (an operator fixes them all at once), each
reported as ``key = value: what is allowed``. Unknown keys are problems too: a
misspelt key silently ignored is a production incident later.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    key: str
    value: object
    allowed: str

    def __str__(self) -> str:
        shown = "<missing>" if self.value is MISSING else repr(self.value)
        return f"{self.key} = {shown}: {self.allowed}"


class ConfigError(Exception):
    """The settings are invalid; ``problems`` holds one entry per bad key."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


MISSING: Any = object()


class Section:
    """Typed reads from one table of the raw settings, collecting problems."""

    def __init__(self, raw: object, path: str, problems: list[ConfigProblem]) -> None:
        self.path = path
        self.problems = problems
        if isinstance(raw, Mapping):
            self.raw: Mapping[str, Any] = {str(k).lower(): v for k, v in raw.items()}
        else:
            self.raw = {}
            problems.append(ConfigProblem(path, raw, "expected a table"))
        self.seen: set[str] = set()

    def _get(self, key: str, default: object) -> Any:
        self.seen.add(key)
        value = self.raw.get(key, default)
        if value is MISSING:
            self.problem(key, MISSING, "required")
        return value

    def problem(self, key: str, value: object, allowed: str) -> None:
        self.problems.append(ConfigProblem(f"{self.path}.{key}" if self.path else key, value, allowed))

    def get_int(self, key: str, lo: int, hi: int, default: object = MISSING) -> int:
        value = self._get(key, default)
        if value is MISSING:
            return lo
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            self.problem(key, value, f"expected an integer from {lo} to {hi}")
            return lo
        return value

    def get_float(self, key: str, lo: float, hi: float, default: object = MISSING) -> float:
        value = self._get(key, default)
        if value is MISSING:
            return lo
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok or not math.isfinite(value) or not lo <= value <= hi:
            self.problem(key, value, f"expected a number from {lo:g} to {hi:g}")
            return lo
        return float(value)

    def get_bool(self, key: str, default: object = MISSING) -> bool:
        value = self._get(key, default)
        if value is MISSING:
            return False
        if not isinstance(value, bool):
            self.problem(key, value, "expected true or false")
            return False
        return value

    def get_str(self, key: str, choices: tuple[str, ...] = (), default: object = MISSING) -> str:
        value = self._get(key, default)
        if value is MISSING:
            return ""
        if not isinstance(value, str) or (choices and value not in choices):
            self.problem(
                key, value, f"expected one of {', '.join(choices)}" if choices else "expected a string"
            )
            return choices[0] if choices else ""
        return value

    def get_str_list(
        self, key: str, choices: tuple[str, ...] = (), default: object = MISSING
    ) -> tuple[str, ...]:
        value = self._get(key, default)
        if value is MISSING:
            return ()
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            self.problem(key, value, "expected a list of strings")
            return ()
        bad = [v for v in value if choices and v not in choices]
        if bad:
            self.problem(key, value, f"unknown {', '.join(bad)}; expected any of {', '.join(choices)}")
        return tuple(v for v in value if v not in bad)

    def get_float_list(
        self, key: str, lo: float, hi: float, default: tuple[float, ...] = ()
    ) -> tuple[float, ...]:
        value = self._get(key, list(default))
        if not isinstance(value, list | tuple) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) and lo <= v <= hi for v in value
        ):
            self.problem(key, value, f"expected a list of numbers in [{lo:g}, {hi:g}]")
            return default
        return tuple(float(v) for v in value)

    def get_str_map(self, key: str) -> tuple[tuple[str, str], ...]:
        self.seen.add(key)
        value = self.raw.get(key, {})
        if not isinstance(value, Mapping) or not all(isinstance(v, str) for v in value.values()):
            self.problem(key, value, "expected a table of strings")
            return ()
        return tuple((str(k), v) for k, v in value.items())

    def tables(self, key: str) -> dict[str, Section]:
        self.seen.add(key)
        raw = self.raw.get(key, {})
        if not isinstance(raw, Mapping):
            self.problem(key, raw, "expected a table of tables")
            return {}
        prefix = f"{self.path}.{key}" if self.path else key
        return {str(name): Section(value, f"{prefix}.{name}", self.problems) for name, value in raw.items()}

    def section(self, key: str) -> Section:
        self.seen.add(key)
        return Section(self.raw.get(key, {}), f"{self.path}.{key}" if self.path else key, self.problems)

    def reject_unknown(self, ignore: tuple[str, ...] = ()) -> None:
        for key in sorted(set(self.raw) - self.seen - set(ignore)):
            self.problem(key, self.raw[key], "unknown key")

    def table_list(self, key: str) -> list[Section]:
        """A list of tables (``[[key]]`` or an inline array of tables), each read as a Section."""
        self.seen.add(key)
        raw = self.raw.get(key, [])
        prefix = f"{self.path}.{key}" if self.path else key
        if not isinstance(raw, list | tuple):
            self.problem(key, raw, "expected a list of tables")
            return []
        return [Section(item, f"{prefix}[{i}]", self.problems) for i, item in enumerate(raw)]

    def has(self, key: str) -> bool:
        return key in self.raw
