"""Settings for usage recording (ledger, recorder, spill file) and budgets (limits, counters, alerts)."""

from __future__ import annotations

from dataclasses import dataclass, field

from omnirelay.config.reader import Section
from omnirelay.usage.ledger import BudgetScope, BudgetSpec
from omnirelay.usage.recorder import FULL_POLICIES, RecorderSettings

LEDGERS = ("sqlite", "postgres")
COUNTER_BACKENDS = ("memory", "redis")
PERIODS = ("day", "week", "month", "total")


@dataclass(frozen=True, slots=True)
class UsageSettings:
    # Off: no records and no budgets at all (for benchmarks, or where accounting happens elsewhere).
    enabled: bool = True
    ledger: str = "sqlite"
    # The embedded ledger's file (WAL mode; created with its directory).
    sqlite_path: str = "var/usage.db"
    # May carry a password: masked wherever settings are shown.
    postgres_dsn: str = "postgresql://postgres@127.0.0.1:5432/omnirelay"
    postgres_schema: str = "public"
    # Where records wait while the ledger is unreachable (JSON lines), replayed when it returns.
    spill_path: str = "var/usage-spill.jsonl"
    spill_fsync: bool = False
    # Queue, batches, flush interval, full-queue policy, retry and drain bounds (read from the same
    # [usage] table: queue_size, batch_size, flush_interval_seconds, full_policy, ...).
    recorder: RecorderSettings = field(default_factory=RecorderSettings)


@dataclass(frozen=True, slots=True)
class BudgetSettings:
    # Spend counters: "memory" (one process) or "redis" (replicas share budgets).
    counters: str = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "omnirelay:budget:"
    # Threshold alerts are POSTed here, signed with webhook_secret (HMAC-SHA256); "" = log only.
    webhook_url: str = ""
    webhook_secret: str = ""
    # How often budget definitions are re-read from the ledger (SetBudget on another replica).
    refresh_seconds: float = 5.0
    limits: tuple[BudgetSpec, ...] = ()


def usage_settings(s: Section) -> UsageSettings:
    d = UsageSettings()
    r = d.recorder
    result = UsageSettings(
        enabled=s.get_bool("enabled", default=d.enabled),
        ledger=s.get_str("ledger", LEDGERS, default=d.ledger),
        sqlite_path=s.get_str("sqlite_path", default=d.sqlite_path),
        postgres_dsn=s.get_str("postgres_dsn", default=d.postgres_dsn),
        postgres_schema=s.get_str("postgres_schema", default=d.postgres_schema),
        spill_path=s.get_str("spill_path", default=d.spill_path),
        spill_fsync=s.get_bool("spill_fsync", default=d.spill_fsync),
        recorder=RecorderSettings(
            queue_size=s.get_int("queue_size", 1, 10_000_000, default=r.queue_size),
            batch_size=s.get_int("batch_size", 1, 100_000, default=r.batch_size),
            flush_interval_seconds=s.get_float(
                "flush_interval_seconds", 0.001, 60.0, default=r.flush_interval_seconds
            ),
            full_policy="spill"
            if s.get_str("full_policy", FULL_POLICIES, default=r.full_policy) == "spill"
            else "block",
            block_seconds=s.get_float("block_seconds", 0.0, 60.0, default=r.block_seconds),
            retry_interval_seconds=s.get_float(
                "retry_interval_seconds", 0.01, 3600.0, default=r.retry_interval_seconds
            ),
            drain_timeout_seconds=s.get_float(
                "drain_timeout_seconds", 0.0, 3600.0, default=r.drain_timeout_seconds
            ),
        ),
    )
    if not result.postgres_dsn.startswith(("postgresql://", "postgres://")):
        s.problem("postgres_dsn", "<redacted>", "expected a postgresql:// URL")
    s.reject_unknown()
    return result


def budget_settings(s: Section) -> BudgetSettings:
    d = BudgetSettings()
    limits = tuple(_limit(item) for item in s.table_list("limits"))
    result = BudgetSettings(
        counters=s.get_str("counters", COUNTER_BACKENDS, default=d.counters),
        redis_url=s.get_str("redis_url", default=d.redis_url),
        key_prefix=s.get_str("key_prefix", default=d.key_prefix),
        webhook_url=s.get_str("webhook_url", default=d.webhook_url),
        webhook_secret=s.get_str("webhook_secret", default=d.webhook_secret),
        refresh_seconds=s.get_float("refresh_seconds", 0.1, 3600.0, default=d.refresh_seconds),
        limits=limits,
    )
    if not result.redis_url.startswith(("redis://", "rediss://", "unix://")):
        s.problem("redis_url", "<redacted>", "expected a redis://, rediss:// or unix:// URL")
    if result.webhook_url and not result.webhook_url.startswith(("http://", "https://")):
        s.problem("webhook_url", result.webhook_url, "expected an http:// or https:// URL")
    if result.webhook_url and not result.webhook_secret:
        s.problem("webhook_secret", "", "required with webhook_url (receivers verify the signature with it)")
    ids = [b.id for b in limits]
    for dup in sorted({i for i in ids if ids.count(i) > 1}):
        s.problem("limits", dup, "budget ids must be unique")
    s.reject_unknown()
    return result


def _limit(s: Section) -> BudgetSpec:
    thresholds = s.get_float_list("thresholds", 0.0001, 1.0, default=(0.5, 0.8, 1.0))
    spec = BudgetSpec(
        id=s.get_str("id"),
        scope=BudgetScope(
            project=s.get_str("project", default=""),
            user=s.get_str("user", default=""),
            model=s.get_str("model", default=""),
            tags=tuple(sorted(s.get_str_map("tags"))),
        ),
        limit_micros=round(s.get_float("limit_usd", 0.0, 1e9) * 1_000_000),
        period=s.get_str("period", PERIODS, default="month"),
        thresholds=thresholds,
        reserve=s.get_bool("reserve", default=False),
    )
    if not spec.id:
        s.problem("id", "", "a budget needs an id")
    s.reject_unknown()
    return spec
