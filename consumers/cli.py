"""``brokersync export trades``: the closed trades of a tax year, as CSV or JSON.

Reads the ``trade_tax_lots`` view (the trade_history consumer's ``closed_trades``): one row per
FIFO lot, with proceeds, cost basis, fees and realized P&L. The tax year is the America/New_York
year of the closing fill. Numbers are written exactly as stored (no float rounding).
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import psycopg

from brokersync.db import Database
from brokersync.errors import BrokersyncError
from brokersync.settings import Settings

EXPORT_COLUMNS = (
    "tax_year", "account", "asset_type", "symbol", "description", "direction", "quantity",
    "multiplier", "opened_at", "closed_at", "open_price", "close_price", "proceeds", "cost_basis",
    "fees", "realized_pnl", "holding_days", "term", "open_execution_id", "close_execution_id",
)


def _text(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")  # exact, without trailing zeros
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def trade_rows(conn: psycopg.Connection[Any], year: int | None, account: str | None) -> list[dict[str, Any]]:
    """Closed trades in export order (close time, fill, lot), values as text-friendly types."""
    cols = ", ".join(EXPORT_COLUMNS)
    rows = conn.execute(
        f"""SELECT {cols} FROM trade_tax_lots
            WHERE (%(y)s::int IS NULL OR tax_year = %(y)s) AND (%(a)s::text IS NULL OR account = %(a)s)
            ORDER BY closed_at, close_execution_id, seq""",
        {"y": year, "a": account},
    ).fetchall()
    return [{c: _text(v) for c, v in zip(EXPORT_COLUMNS, r, strict=True)} for r in rows]


def render(rows: list[dict[str, Any]], fmt: str) -> str:
    if fmt == "json":
        return orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode() + "\n"
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=EXPORT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    from schema import pending

    with Database(settings) as db, db.connect(autocommit=True) as conn:
        todo = pending(conn)
        if todo:
            raise BrokersyncError(
                f"the schema is not migrated (pending: {', '.join(todo)}): run brokersync migrate"
            )
        rows = trade_rows(conn, args.year, args.account)
    text = render(rows, args.format)
    if args.output:
        path = Path(args.output)
        try:
            path.write_text(text, encoding="utf-8", newline="")
        except OSError as exc:
            raise BrokersyncError(f"cannot write {path}: {exc.strerror or exc}") from None
        print(f"{len(rows)} closed trade(s) written to {path}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _year(value: str) -> int:
    if not (value.isdigit() and len(value) == 4):
        raise argparse.ArgumentTypeError(f"{value!r} is not a year (YYYY)")
    return int(value)


def register(sub: Any) -> None:
    s = sub.add_parser("export", help="export data from the consumers' tables")
    s.add_argument("what", choices=["trades"], help="trades: closed trades (FIFO lots) with realized P&L")
    s.add_argument("--format", choices=["csv", "json"], default="csv")
    s.add_argument("--year", type=_year, metavar="YYYY",
                   help="tax year (America/New_York year of the closing fill); default: all years")
    s.add_argument("--account", metavar="ACCOUNT", help="one account number (default: all)")
    s.add_argument("--output", "-o", metavar="FILE", help="write to FILE instead of stdout")
    s.set_defaults(func=cmd_export, component="export")
