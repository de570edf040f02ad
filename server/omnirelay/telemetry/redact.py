"""Masking: secrets out of every log line, personal data out of logged or traced content.

``Secrets`` knows the configured secret values (provider keys, tokens, DSN and
Redis passwords, exporter headers) and the shapes of credentials a caller or a
library might print (``Bearer ...``, ``sk-...``); it is applied to each whole
formatted log line, so library and exception text are covered too. ``Pii`` masks
e-mail addresses, phone numbers and card numbers (Luhn-checked, so order numbers
and timestamps survive) in prompts and completions when content logging is on.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

SECRET_MASK = "[REDACTED]"
# Values shorter than this are not masked by value: "on" or "1" would mangle every line.
_MIN_SECRET = 6
_CREDENTIAL_SHAPES = (
    r"\b(?i:bearer)\s+[A-Za-z0-9._~+/=-]{8,}",
    r"\bsk-(?:ant-|proj-)?[A-Za-z0-9_-]{12,}",
    r"\bAIza[0-9A-Za-z_-]{30,}",
    # user:password@ in a URL (redis://:pw@host, postgresql://user:pw@host)
    r"(?<=://)[^/\s:@]*:[^/\s@]+(?=@)",
)


# Substrings without which no credential shape can match: the regular expression (slow on a
# line with nothing to mask, since none of its branches starts with a fixed string) runs only
# on lines that hold one of them or a known secret.
_SHAPE_MARKERS = ("earer", "EARER", "sk-", "AIza", "://")


class Secrets:
    """Masks known secret values and credential shapes in text."""

    def __init__(self, values: Iterable[str]) -> None:
        known = sorted({v for v in values if len(v) >= _MIN_SECRET}, key=len, reverse=True)
        parts = [re.escape(v) for v in known]
        parts.extend(_CREDENTIAL_SHAPES)
        self._pattern = re.compile("|".join(parts))
        self._markers = (*known, *_SHAPE_MARKERS)

    def __call__(self, text: str) -> str:
        return text if self.absent(text) else self._pattern.sub(SECRET_MASK, text)

    def absent(self, text: str) -> bool:
        """True when ``text`` holds no known secret and nothing a credential shape starts with: a
        line made of such pieces and the gateway's own words needs no mask."""
        for marker in self._markers:  # noqa: SIM110 (a loop costs less than all() of a generator)
            if marker in text:
                return False
        return True


_PII = {
    # Starts only where a local part starts, and never gives back what it took: without both, a
    # long run of letters with no "@" made the search quadratic (seconds for a 40 kB prompt).
    "email": re.compile(
        r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]++@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"
    ),
    # A run of at least 13 digits, grouped by spaces or dashes; _mask_card finds the card in it
    # (a quantity before or an expiry or CVV after may share the run).
    "card": re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,}(?![\d-])"),
    # International or national numbers with at least 8 digits, grouped by spaces, dots or dashes.
    "phone": re.compile(
        r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]?\d{2,4}){2,4}(?!\w)"
    ),
}
_MASKS = {"email": "[EMAIL]", "card": "[CARD]", "phone": "[PHONE]"}
# Cards before phones: a card number also looks like a long phone number.
_ORDER = ("email", "card", "phone")


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


class Pii:
    """Masks the configured kinds of personal data (``email``, ``phone``, ``card``)."""

    def __init__(self, kinds: Iterable[str]) -> None:
        wanted = set(kinds)
        self._steps = [(k, _PII[k]) for k in _ORDER if k in wanted]

    def __call__(self, text: str) -> str:
        for kind, pattern in self._steps:
            if kind == "card":
                text = pattern.sub(_mask_card, text)
            elif kind == "phone":
                text = pattern.sub(_mask_phone, text)
            else:
                text = pattern.sub(_MASKS[kind], text)
        return text


_SEPARATOR = re.compile(r"([ -])")
# Card lengths, most common first: when a run holds several Luhn-valid spans, the likelier wins.
_CARD_LENGTHS = (16, 15, 14, 19, 13, 17, 18)
# How many groups before a card may belong to something else in the same run ("qty 2 4111 ...").
_LEADING_GROUPS = 3
_NOT_A_PHONE = re.compile(
    r"\d{4}([-./])\d{1,2}\1\d{1,2}"  # 2026-11-22
    r"|\d{1,2}([-./])\d{1,2}\2\d{4}"  # 22.11.2026
    r"|(?:\d{1,3}\.){3}\d{1,3}"  # 192.168.10.20
)


def _mask_card(match: re.Match[str]) -> str:
    # Alternating groups and separators: ["4111", " ", "1111", ...]
    parts = _SEPARATOR.split(match.group(0))
    return _mask_card_groups(parts[0::2], parts[1::2])


def _mask_card_groups(groups: list[str], separators: list[str]) -> str:
    """Masks each card made of whole groups, left to right, in one pass (linear in the run)."""
    out: list[str] = []
    i = 0
    while i < len(groups):
        found = _card_at(groups, i)
        if found is None:
            out.append(groups[i])
            end = i + 1
        else:
            first, end = found
            out.extend(g + s for g, s in zip(groups[i:first], separators[i:first], strict=True))
            out.append(_MASKS["card"])
        if end < len(groups):
            out.append(separators[end - 1])
        i = end
    return "".join(out)


def _card_at(groups: list[str], i: int) -> tuple[int, int] | None:
    """The likeliest card starting within the next few groups: a quantity or a short prefix
    may stand before it in the same run. (first group, end group) or None."""
    best: tuple[int, int, int] | None = None  # (preference, first group, end group)
    for first in range(i, min(i + _LEADING_GROUPS, len(groups))):
        digits = 0
        for end in range(first + 1, len(groups) + 1):
            digits += len(groups[end - 1])
            if digits > 19:
                break
            if digits in _CARD_LENGTHS and _luhn("".join(groups[first:end])):
                rank = _CARD_LENGTHS.index(digits)
                if best is None or rank < best[0]:
                    best = (rank, first, end)
    return None if best is None else (best[1], best[2])


def _mask_phone(match: re.Match[str]) -> str:
    found = match.group(0)
    if _NOT_A_PHONE.fullmatch(found):
        return found
    digits = sum(ch.isdigit() for ch in found)
    # Fewer than 8 digits is a number, a date or a version, not a phone number.
    return _MASKS["phone"] if 8 <= digits <= 15 else found
