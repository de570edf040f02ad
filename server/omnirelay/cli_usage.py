"""The ``omnirelay usage`` and ``omnirelay pricing`` commands.

``usage`` asks a running gateway (QueryUsage, ExportUsage); ``pricing`` reads
the settings, so prices can be reviewed and compared before a deploy.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TextIO

EXIT_FAILED = 1
EXIT_USAGE = 2
_DIMENSIONS = (
    "project",
    "user",
    "model",
    "provider",
    "deployment",
    "status",
    "minute",
    "hour",
    "day",
    "week",
    "month",
    "tag",
)
_SINCE = re.compile(r"^(\d+)([mhdw])$")
_UNIT = {"m": 60, "h": 3600, "d": 86400, "w": 604800}


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Left-aligned columns two spaces apart, each as wide as its widest cell."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def add_commands(sub: Any) -> None:
    usage = sub.add_parser("usage", help="a running gateway's usage: a summary table, or export the records")
    usage.add_argument("action", nargs="?", choices=("summary", "export"), default="summary")
    usage.add_argument("--target", default="127.0.0.1:50051")
    usage.add_argument("--since", default="", help="only the last N minutes/hours/days/weeks, e.g. 24h, 7d")
    usage.add_argument("--start", default="", help="inclusive start, ISO 8601 (UTC when no offset)")
    usage.add_argument("--end", default="", help="exclusive end, ISO 8601")
    usage.add_argument("--project", default="")
    usage.add_argument("--user", default="")
    usage.add_argument("--model", default="")
    usage.add_argument("--provider", default="")
    usage.add_argument(
        "--tag", action="append", default=[], help="KEY=VALUE; records carrying it (repeatable)"
    )
    usage.add_argument(
        "--by", default="model", help=f"summary: group by these, comma-separated ({', '.join(_DIMENSIONS)})"
    )
    usage.add_argument("--tag-key", default="", help="summary: the tag key 'tag' groups by")
    usage.add_argument("--format", choices=("csv", "jsonl"), default="jsonl", help="export format")
    usage.add_argument("--output", default="-", help="export: file to write ('-' is stdout)")
    usage.add_argument("--timeout", type=float, default=60.0)
    usage.set_defaults(func=_usage)

    pricing = sub.add_parser(
        "pricing", help="the price table in force: show it, or diff it against a saved one"
    )
    pricing.add_argument("action", choices=("show", "diff"))
    pricing.add_argument("snapshot", nargs="?", help="diff: a file written by `pricing show --format json`")
    pricing.add_argument("--profile")
    pricing.add_argument("--format", choices=("table", "json"), default="table")
    pricing.set_defaults(func=_pricing)


# --- usage -----------------------------------------------------------------------------------


def _usage(args: argparse.Namespace) -> int:
    import grpc

    from omnirelay_client.errors import from_rpc_error
    from omnirelay_client.v1 import usage_pb2, usage_pb2_grpc

    try:
        filt = _filter(args, usage_pb2)
    except ValueError as exc:
        print(f"omnirelay usage: {exc}", file=sys.stderr)
        return EXIT_USAGE
    with grpc.insecure_channel(args.target) as channel:
        stub = usage_pb2_grpc.UsageServiceStub(channel)
        try:
            if args.action == "export":
                records = (
                    r.record
                    for r in stub.ExportUsage(usage_pb2.ExportUsageRequest(filter=filt), timeout=args.timeout)
                )
                if args.output == "-":
                    count = _export(records, args.format, sys.stdout)
                else:
                    with Path(args.output).open("w", newline="", encoding="utf-8") as out:
                        count = _export(records, args.format, out)
                print(f"exported {count} records", file=sys.stderr)
                return 0
            by = [d.strip() for d in args.by.split(",") if d.strip()]
            unknown = [d for d in by if d not in _DIMENSIONS]
            if unknown:
                print(f"omnirelay usage: unknown --by {', '.join(unknown)}", file=sys.stderr)
                return EXIT_USAGE
            request = usage_pb2.QueryUsageRequest(
                filter=filt,
                group_by=[usage_pb2.UsageDimension.Value(f"USAGE_DIMENSION_{d.upper()}") for d in by],
                group_by_tag=args.tag_key,
            )
            reply = stub.QueryUsage(request, timeout=args.timeout)
        except grpc.RpcError as exc:
            print(f"omnirelay: {from_rpc_error(exc)}", file=sys.stderr)
            return EXIT_FAILED
    _summary(by, reply.groups)
    return 0


def _filter(args: argparse.Namespace, usage_pb2: Any) -> Any:
    filt = usage_pb2.UsageFilter(
        project=args.project, user=args.user, model=args.model, provider=args.provider
    )
    for tag in args.tag:
        key, sep, value = tag.partition("=")
        if not sep or not key:
            raise ValueError(f"--tag {tag!r}: expected KEY=VALUE")
        filt.tags[key] = value
    if args.since:
        found = _SINCE.match(args.since)
        if found is None:
            raise ValueError(f"--since {args.since!r}: expected a number and m, h, d or w (e.g. 24h)")
        start = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=int(found[1]) * _UNIT[found[2]])
        filt.start_time.FromDatetime(start)
    for name, field in (("start", "start_time"), ("end", "end_time")):
        text = getattr(args, name)
        if text:
            try:
                when = dt.datetime.fromisoformat(text)
            except ValueError:
                raise ValueError(f"--{name} {text!r}: expected an ISO 8601 time") from None
            if when.tzinfo is None:
                when = when.replace(tzinfo=dt.UTC)
            getattr(filt, field).FromDatetime(when)
    return filt


def _ms(d: Any) -> str:
    return f"{(d.seconds + d.nanos / 1e9) * 1000:.0f}"


def _usd(micros: int) -> str:
    return f"{micros / 1e6:.6f}".rstrip("0").rstrip(".") if micros else "0"


def _summary(by: Sequence[str], groups: Iterable[Any]) -> None:
    header = (
        *[d.upper() for d in by],
        "CALLS",
        "ERR%",
        "IN",
        "OUT",
        "CACHED",
        "COST $",
        "SAVED $",
        "HIT%",
        "FALLBK%",
        "P50 ms",
        "P95 ms",
        "P99 ms",
    )
    rows = [
        (
            *g.keys,
            str(g.calls),
            f"{g.error_rate * 100:.1f}",
            str(g.usage.input_tokens),
            str(g.usage.output_tokens),
            str(g.usage.cached_input_tokens),
            _usd(g.usage.cost_micros),
            _usd(g.saved_cost_micros),
            f"{g.cache_hit_rate * 100:.1f}",
            f"{g.fallback_rate * 100:.1f}",
            _ms(g.latency.p50),
            _ms(g.latency.p95),
            _ms(g.latency.p99),
        )
        for g in groups
    ]
    if not rows:
        print("no usage recorded for this filter")
        return
    print_table(header, rows)


_CSV_FIELDS = (
    "time",
    "request_id",
    "trace_id",
    "project",
    "user",
    "tags",
    "requested_model",
    "resolved_model",
    "provider",
    "deployment",
    "status_code",
    "streamed",
    "cache",
    "fallback_used",
    "attempts",
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "cache_write_input_tokens",
    "reasoning_tokens",
    "estimated",
    "cost_micros",
    "saved_cost_micros",
    "price_table_version",
    "latency_seconds",
    "ttft_seconds",
)


def _export(records: Iterable[Any], fmt: str, out: TextIO) -> int:
    from google.protobuf import json_format

    from omnirelay_client.v1 import types_pb2

    writer = csv.DictWriter(out, fieldnames=_CSV_FIELDS) if fmt == "csv" else None
    if writer is not None:
        writer.writeheader()
    count = 0
    for r in records:
        count += 1
        if writer is None:
            out.write(
                json.dumps(json_format.MessageToDict(r, preserving_proto_field_name=True), sort_keys=True)
            )
            out.write("\n")
            continue
        u = r.usage
        writer.writerow(
            {
                "time": r.time.ToDatetime(dt.UTC).isoformat(),
                "request_id": r.request_id,
                "trace_id": r.trace_id,
                "project": r.attribution.project,
                "user": r.attribution.user,
                "tags": ";".join(f"{k}={v}" for k, v in sorted(r.attribution.tags.items())),
                "requested_model": r.requested_model,
                "resolved_model": r.resolved_model,
                "provider": r.provider,
                "deployment": r.deployment,
                "status_code": r.status_code,
                "streamed": r.streamed,
                "cache": types_pb2.CacheOutcome.Name(r.cache).removeprefix("CACHE_OUTCOME_").lower(),
                "fallback_used": r.fallback_used,
                "attempts": len(r.attempts),
                "input_tokens": u.input_tokens,
                "output_tokens": u.output_tokens,
                "cached_input_tokens": u.cached_input_tokens,
                "cache_write_input_tokens": u.cache_write_input_tokens,
                "reasoning_tokens": u.reasoning_tokens,
                "estimated": u.estimated,
                "cost_micros": u.cost_micros,
                "saved_cost_micros": r.saved_cost_micros,
                "price_table_version": r.price_table_version,
                "latency_seconds": f"{r.latency.seconds + r.latency.nanos / 1e9:.6f}",
                "ttft_seconds": (
                    f"{r.time_to_first_token.seconds + r.time_to_first_token.nanos / 1e9:.6f}"
                    if r.HasField("time_to_first_token")
                    else ""
                ),
            }
        )
    return count


# --- pricing ---------------------------------------------------------------------------------


def _pricing(args: argparse.Namespace) -> int:
    from omnirelay.config import load_settings
    from omnirelay.usage.pricing import PriceTable, diff, price_rows

    settings = load_settings(args.profile)
    table = PriceTable(price_rows(settings.models, settings.providers))
    current = table.snapshot()
    if args.action == "show":
        if args.format == "json":
            print(json.dumps({"version": table.version, "prices": current}, indent=2, sort_keys=True))
        else:
            _price_table(table.version, current)
        return 0
    if not args.snapshot:
        print(
            "omnirelay pricing diff: name the snapshot file (from `pricing show --format json`)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        saved = json.loads(Path(args.snapshot).read_text(encoding="utf-8"))
        old = saved["prices"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"omnirelay pricing diff: cannot read {args.snapshot}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    changes = diff(old, current)
    print(f"{saved.get('version', '?')} -> {table.version}")
    if not changes:
        print("no price changes")
        return 0
    for where, field, before, after in changes:
        print(f"{where}: {field} {before} -> {after}")
    # Like diff(1): differences found is exit 1, so a deploy script can stop on it.
    return EXIT_FAILED


def _price_table(version: str, rows: list[dict[str, object]]) -> None:
    print(f"price table {version} (USD per million tokens)")
    header = (
        "MODEL",
        "DEPLOYMENT",
        "INPUT",
        "OUTPUT",
        "CACHED",
        "CACHE WRITE",
        "REASONING",
        "AS OF",
        "SOURCE",
    )
    lines = [
        tuple(
            str(r.get(k, "-"))
            for k in (
                "model",
                "deployment",
                "input",
                "output",
                "cached_input",
                "cache_write",
                "reasoning",
                "as_of",
                "source",
            )
        )
        for r in rows
    ]
    print_table(header, lines)
