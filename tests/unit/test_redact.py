"""Masking: configured secrets and credential shapes out of log lines, personal data out of content.

``Secrets`` is applied to every formatted log line (JSON, URLs, exception text included);
``Pii`` to prompts and completions when content logging is on, only for the configured kinds.
``secret_values`` is what feeds ``Secrets``: every secret the settings hold.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys

import pytest

from omnirelay.config import HttpProviderSettings, Settings, load_settings, secret_values
from omnirelay.telemetry.logs import JsonFormatter, TextFormatter
from omnirelay.telemetry.redact import SECRET_MASK, Pii, Secrets

OPENAI_KEY = "sk-proj-Zq81bXf0TnA3kLw9YpR2cVdE"
ANTHROPIC_KEY = "sk-ant-api03-Hc7Pq2LmV9xWb4TnR8sKd1Fj"
GEMINI_KEY = "AIzaSyD4-f8Kq1Lm3Np5Rt7Vx9Zb2Cd4Ef6Gh8Ij"
# Configured values of no particular shape: only the configured list can mask them.
TOKEN = "otlp-ingest-7c1e9a44b2d0"
WEBHOOK = "whsec_6f1d2b9e8a7c5d3f"
PASSWORD = "r3d1s-pa55w0rd"
CONFIGURED = (OPENAI_KEY, ANTHROPIC_KEY, GEMINI_KEY, TOKEN, WEBHOOK, PASSWORD)


@pytest.fixture
def secrets() -> Secrets:
    return Secrets(CONFIGURED)


# --- Secrets: configured values -----------------------------------------------------------------

PLACES = {
    "bare": "{v}",
    "in_json": '{{"api_key": "{v}", "model": "gpt-4o"}}',
    "json_value_start": '{{"token":"{v}"}}',
    "in_url_query": "POST https://api.example.com/v1/chat?key={v}&alt=sse 200",
    "in_header_dump": "headers={{'x-api-key': '{v}', 'accept': 'application/json'}}",
    "in_exception": "Traceback (most recent call last):\n  ...\nValueError: rejected key {v} (HTTP 401)",
    "twice": "{v} and again {v}",
    "glued_to_text": "prefix{v}suffix",
}


@pytest.mark.parametrize("value", CONFIGURED)
@pytest.mark.parametrize("place", list(PLACES))
def test_configured_value_is_masked_wherever_it_appears(secrets: Secrets, value: str, place: str) -> None:
    template = PLACES[place]
    # Only the secret goes: the text around it survives.
    assert secrets(template.format(v=value)) == template.format(v=SECRET_MASK)


@pytest.mark.parametrize("value", CONFIGURED)
def test_configured_value_as_a_url_password_is_masked(secrets: Secrets, value: str) -> None:
    line = f"connecting to redis://default:{value}@cache.internal:6379/0"
    masked = secrets(line)
    assert value not in masked
    assert masked == f"connecting to redis://{SECRET_MASK}@cache.internal:6379/0"


def test_configured_value_is_masked_in_a_json_log_line_with_its_exception() -> None:
    formatter = JsonFormatter(Secrets([TOKEN]))
    try:
        raise RuntimeError(f"exporter refused header authorization={TOKEN}")
    except RuntimeError:
        record = logging.LogRecord("omnirelay.x", logging.ERROR, __file__, 1, "failed %s", (TOKEN,), None)
        record.exc_info = sys.exc_info()
        record.fields = {"header": TOKEN}
    line = formatter.format(record)
    assert TOKEN not in line
    entry = json.loads(line)  # still valid JSON: the mask has no quote or backslash
    assert entry["msg"] == f"failed {SECRET_MASK}"
    assert entry["header"] == SECRET_MASK
    assert "RuntimeError" in entry["exc"]
    assert SECRET_MASK in entry["exc"]


def test_configured_value_is_masked_in_a_text_log_line() -> None:
    formatter = TextFormatter(Secrets([WEBHOOK]))
    record = logging.LogRecord("omnirelay.x", logging.INFO, __file__, 1, "signing with %s", (WEBHOOK,), None)
    record.fields = {"secret": WEBHOOK}
    line = formatter.format(record)
    assert WEBHOOK not in line
    assert line.count(SECRET_MASK) == 2


def test_longer_secret_wins_over_a_shorter_one_it_contains() -> None:
    short, long = "abcdef123", "abcdef123456789"
    masked = Secrets([short, long])(f"key={long}")
    assert masked == f"key={SECRET_MASK}"


# --- Secrets: credential shapes, configured or not -----------------------------------------------

SHAPES = {
    "authorization_bearer": ("Authorization: Bearer abc.def-123456789", "abc.def-123456789"),
    "bearer_lowercase": ("authorization: bearer abcdefgh12345678", "abcdefgh12345678"),
    "bearer_uppercase": ("AUTHORIZATION: BEARER abcdefgh12345678", "abcdefgh12345678"),
    "bearer_in_json": ('{"authorization": "Bearer eyJhbGciOi.J9eyJzdWIi.Oi"}', "eyJhbGciOi.J9eyJzdWIi.Oi"),
    "openai_project_key": ("using key sk-proj-AbCdEfGhIjKlMnOp1234", "sk-proj-AbCdEfGhIjKlMnOp1234"),
    "openai_key": ("key=sk-AbCdEfGhIjKlMnOp", "sk-AbCdEfGhIjKlMnOp"),
    "anthropic_key": ("x-api-key: sk-ant-api03-AbCdEfGhIjKl", "sk-ant-api03-AbCdEfGhIjKl"),
    "google_key": ("?key=AIzaSyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q", "AIzaSyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q"),
    "redis_password_only": ("redis://:pw@host", ":pw"),
    "redis_user_password": ("rediss://default:hunter22@cache:6380/1", "hunter22"),
    "postgres_password": ("postgresql://u:pw@h/db", "u:pw"),
    "postgres_in_error": (
        "could not connect to postgresql://postgres:s3cr3t@db.internal:5432/omnirelay: timeout",
        "s3cr3t",
    ),
}


@pytest.mark.parametrize("case", list(SHAPES))
def test_credential_shapes_are_masked_without_being_configured(case: str) -> None:
    line, credential = SHAPES[case]
    masked = Secrets([])(line)
    assert credential not in masked
    assert SECRET_MASK in masked


def test_url_password_mask_keeps_scheme_and_host() -> None:
    assert Secrets([])("redis://:pw@host") == f"redis://{SECRET_MASK}@host"
    assert Secrets([])("postgresql://u:pw@h/db") == f"postgresql://{SECRET_MASK}@h/db"


ORDINARY = (
    "omnirelay serving on 127.0.0.1:50051 profile=development",
    '{"ts": "2026-11-22T10:00:00.000Z", "level": "INFO", "logger": "omnirelay.app", "msg": "stopped"}',
    "request request_id=rid-1 method=Complete model=gpt-4o status=OK latency_ms=12.5",
    "GET /v1/models 200 (no credentials in this one)",
    "a task-list with sk- in it and a risk-free bearer of news",  # markers, but no credential
    "http://127.0.0.1:9464/metrics",  # a URL without user:password@
    "mail to ops@example.com about the harbor",
    "",
)


@pytest.mark.parametrize("line", ORDINARY)
def test_ordinary_lines_are_left_untouched(secrets: Secrets, line: str) -> None:
    assert secrets(line) == line


def test_a_line_without_any_marker_is_returned_as_is(secrets: Secrets) -> None:
    line = "usage recorder closed: 3 written, 0 spilled, 0 replayed, 0 waiting, 0 lost"
    assert secrets(line) is line


@pytest.mark.parametrize("value", ["", "1", "on", "abc12"])
def test_values_shorter_than_six_characters_are_not_masked_by_value(value: str) -> None:
    line = f"setting value={value} in the middle of abc12 on 1 line"
    assert Secrets([value])(line) == line


def test_a_six_character_value_is_masked() -> None:
    assert Secrets(["q7w8e9"])("pw=q7w8e9;") == f"pw={SECRET_MASK};"


def test_configured_values_and_shapes_compile_together() -> None:
    """Regression: an inline ``(?i)`` flag not at the start made the joined pattern fail to compile."""
    values = [OPENAI_KEY, "(?i)not-a-flag", "dots.and*stars+[brackets]", "Case-Sensitive-Secret"]
    secrets = Secrets(values)
    line = "k1=(?i)not-a-flag k2=dots.and*stars+[brackets] k3=Case-Sensitive-Secret BEARER abcdefgh12345"
    assert secrets(line) == f"k1={SECRET_MASK} k2={SECRET_MASK} k3={SECRET_MASK} {SECRET_MASK}"
    # Values are matched literally: a regex-looking value is not a pattern...
    assert secrets("dotsXand**starss+b") == "dotsXand**starss+b"
    # ...and the bearer shape's case-insensitivity does not leak into the configured values.
    assert secrets("k3=case-sensitive-secret") == "k3=case-sensitive-secret"


# --- Pii ------------------------------------------------------------------------------------------

ALL_KINDS = ("email", "phone", "card")

MASKED = {
    "email_plain": ("write to ana@example.com today", "write to [EMAIL] today"),
    "email_subaddress": ("cc bob.smith+alerts@mail.example.co.uk.", "cc [EMAIL]."),
    "phone_international": ("call +1 415 555 0132 now", "call [PHONE] now"),
    "phone_uk_parentheses": ("office (020) 7946 0958", "office [PHONE]"),
    "phone_dashes": ("cell 415-555-0132.", "cell [PHONE]."),
    "phone_dots": ("fax 415.555.0132", "fax [PHONE]"),
    "phone_e164_uk": ("+44 20 7946 0958", "[PHONE]"),
    "card_spaces": ("card 4111 1111 1111 1111 exp 12/29", "card [CARD] exp 12/29"),
    "card_dashes": ("card 4111-1111-1111-1111", "card [CARD]"),
    "card_plain": ("card 5500005555555559", "card [CARD]"),
    "card_amex": ("amex 378282246310005", "amex [CARD]"),
    "all_three": (
        "I am ana@example.com, +1 415 555 0132, paying with 4111 1111 1111 1111",
        "I am [EMAIL], [PHONE], paying with [CARD]",
    ),
}


@pytest.mark.parametrize("case", list(MASKED))
def test_personal_data_is_masked(case: str) -> None:
    text, expected = MASKED[case]
    assert Pii(ALL_KINDS)(text) == expected


KEPT = {
    "luhn_invalid_16_digits": "order 4111 1111 1111 1112 shipped",
    "luhn_invalid_16_digits_plain": "ref 1234567812345678",
    "luhn_invalid_16_digits_dashes": "ref 1234-5678-1234-5678",
    "short_number": "order 12345 of 67",
    "seven_digit_number": "ticket 555 0132",
    "version": "upgraded to 1.2.3 from 1.10.12",
    "timestamp": "at 2026-11-22T10:20:30Z",
    "time_of_day": "at 12:30:45",
    "small_ip": "from 10.0.0.1",
    "at_sign_without_domain": "ping @ana about it",
}


@pytest.mark.parametrize("case", list(KEPT))
def test_things_that_only_look_like_personal_data_are_kept(case: str) -> None:
    text = KEPT[case]
    assert Pii(ALL_KINDS)(text) == text


DATES = {
    "iso_date": "due 2026-11-22 at noon",
    "iso_date_alone": "2026-11-22",
    "european_date": "due 22.11.2026 at noon",
}


@pytest.mark.parametrize("case", list(DATES))
def test_dates_are_kept(case: str) -> None:
    text = DATES[case]
    assert Pii(ALL_KINDS)(text) == text


SAMPLE = "ana@example.com, +1 415 555 0132, 4111 1111 1111 1111"
ONLY = {
    (): SAMPLE,
    ("email",): "[EMAIL], +1 415 555 0132, 4111 1111 1111 1111",
    ("phone",): "ana@example.com, [PHONE], 4111 1111 1111 1111",  # 16 digits is too long for a phone
    ("card",): "ana@example.com, +1 415 555 0132, [CARD]",
    ("email", "card"): "[EMAIL], +1 415 555 0132, [CARD]",
    ("card", "phone"): "ana@example.com, [PHONE], [CARD]",
    ALL_KINDS: "[EMAIL], [PHONE], [CARD]",
}


@pytest.mark.parametrize("kinds", list(ONLY), ids=lambda k: "+".join(k) or "none")
def test_only_the_configured_kinds_are_masked(kinds: tuple[str, ...]) -> None:
    assert Pii(kinds)(SAMPLE) == ONLY[kinds]


CARD_NEXT_TO_DIGITS = {
    "expiry_after": ("card 4111 1111 1111 1111 12/29", "card [CARD] 12/29"),
    "cvv_after": ("card 4111111111111111 123", "card [CARD] 123"),
    "quantity_before": ("qty 2 4111-1111-1111-1111", "qty 2 [CARD]"),
}


@pytest.mark.parametrize("case", list(CARD_NEXT_TO_DIGITS))
def test_a_card_next_to_other_digits_is_masked(case: str) -> None:
    text, expected = CARD_NEXT_TO_DIGITS[case]
    assert Pii(ALL_KINDS)(text) == expected


def test_a_card_is_masked_as_a_card_not_as_a_phone() -> None:
    # A 15-digit card fits the phone pattern too: cards are masked first.
    assert Pii(ALL_KINDS)("amex 378282246310005") == "amex [CARD]"
    assert Pii(["phone"])("amex 378282246310005") == "amex [PHONE]"


# --- secret_values --------------------------------------------------------------------------------


def _settings_with_secrets() -> Settings:
    base = load_settings("development")
    provider = HttpProviderSettings(
        name="openai",
        kind="openai",
        base_url="https://api.openai.com/v1",
        api_key=OPENAI_KEY,
        headers=(("OpenAI-Organization-Token", "org-tok-1a2b3c4d"), ("Accept", "application/json")),
    )
    return dataclasses.replace(
        base,
        providers={**base.providers, "openai": provider},
        tracing=dataclasses.replace(base.tracing, headers=(("x-honeycomb-team", TOKEN),)),
        budgets=dataclasses.replace(
            base.budgets,
            webhook_url="https://hooks.example.com/budget",
            webhook_secret=WEBHOOK,
            redis_url="redis://budget:bud9et-pw@127.0.0.1:6379/1",
        ),
        cache=dataclasses.replace(base.cache, redis_url=f"redis://:{PASSWORD}@127.0.0.1:6379/0"),
        usage=dataclasses.replace(base.usage, postgres_dsn="postgresql://omni:pg-pa55@db:5432/omnirelay"),
    )


def test_secret_values_finds_every_configured_secret() -> None:
    found = secret_values(_settings_with_secrets())
    for expected in (OPENAI_KEY, "org-tok-1a2b3c4d", TOKEN, WEBHOOK, PASSWORD, "bud9et-pw", "pg-pa55"):
        assert expected in found
    # Not secrets: a plain header's value, URLs themselves, user names.
    for plain in ("application/json", "budget", "omni", "https://hooks.example.com/budget"):
        assert plain not in found


def test_secret_values_feed_the_log_mask() -> None:
    mask = Secrets(secret_values(_settings_with_secrets()))
    line = f"cfg openai={OPENAI_KEY} otlp={TOKEN} hook={WEBHOOK} cache=redis://:{PASSWORD}@127.0.0.1:6379/0"
    masked = mask(line)
    for secret in (OPENAI_KEY, TOKEN, WEBHOOK, PASSWORD):
        assert secret not in masked
    assert "127.0.0.1:6379/0" in masked


def test_cards_side_by_side_in_one_run_are_each_masked() -> None:
    text = "cards 4111 1111 1111 1111 5500 0055 5555 5559 378282246310005 done"
    assert Pii(ALL_KINDS)(text) == "cards [CARD] [CARD] [CARD] done"


def test_a_long_run_of_cards_is_masked_in_one_pass() -> None:
    # Regression: the masking recursed once per card (RecursionError past ~1,000 cards in a run)
    # and rescanned the run each time.
    count = 5_000
    masked = Pii(["card"])(" ".join(["4111 1111 1111 1111"] * count))
    assert masked == " ".join(["[CARD]"] * count)


def test_digits_around_cards_in_a_long_run_survive() -> None:
    run = " ".join(["7", "4111-1111-1111-1111", "12"] * 3)
    assert Pii(["card"])(f"x {run} y") == "x " + " ".join(["7", "[CARD]", "12"] * 3) + " y"


def test_an_email_match_starts_only_where_a_local_part_starts() -> None:
    """What keeps the e-mail search linear: no attempt from inside a run of local-part characters.

    Before, each position of a long "@"-less run was a new attempt scanning to its end: a 40 kB
    run of letters took seconds of the event loop's time with content logging on.
    """
    from omnirelay.telemetry.redact import _PII

    email = _PII["email"]
    assert email.match("ana.maria@example.com", 1) is None
    assert email.match("ana.maria@example.com", 0) is not None
    text = "x" * 100_000 + " write to ana@example.com " + "y." * 50_000
    masked = Pii(["email"])(text)
    assert masked == "x" * 100_000 + " write to [EMAIL] " + "y." * 50_000
