"""The Robinhood adapter through robin_stocks's real session, with only HTTP faked."""

from __future__ import annotations

import io
import json
import logging
import threading
from argparse import Namespace
from typing import Any

import psycopg
import pytest
import responses

from brokersync.errors import BrokersyncError
from brokersync.settings import Settings
from producer.service import Producer
from schema import payloads
from tests.producer.conftest import rows
from tests.producer.robinhood_fake import (
    API,
    INDIVIDUAL,
    IRA,
    OPT_CALL,
    OPT_PUT,
    FakeRobinhood,
    position,
)


def once(settings: Settings, db_url: str, **kw: Any) -> tuple[Producer, Any]:
    producer = Producer(settings, threading.Event(), **kw)
    try:
        return producer, producer.run(db_url, once=True)
    finally:
        producer.close()


def snapshot(conn: psycopg.Connection[Any], kind: str, account: str) -> Any:
    found = rows(conn, "SELECT payload FROM staging_snapshots WHERE kind = %s AND account = %s ORDER BY id",
                 kind, account)
    assert len(found) == 1, f"{kind}/{account}: {len(found)} snapshots"
    return found[0][0]


def cycle_row(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    r = rows(conn, """SELECT status, outcomes, error, snapshots, broker_calls, shape_drift, clock_drift_s, source
                      FROM producer_cycle_runs ORDER BY id DESC LIMIT 1""")[0]
    return dict(zip(("status", "outcomes", "error", "snapshots", "broker_calls", "shape_drift",
                     "clock_drift_s", "source"), r, strict=True))


def test_url_builders_are_robin_stocks(rh_session: Any) -> None:
    from robin_stocks.robinhood import urls

    from producer import cycles

    assert urls.account_profile_url() == cycles.ACCOUNTS_URL + "?default_to_all_accounts=true"
    assert urls.portfolio_profile_url() == cycles.PORTFOLIOS_URL
    assert urls.positions_url() == cycles.POSITIONS_URL
    assert urls.aggregate_url(None) == cycles.OPTION_POSITIONS_URL
    assert urls.marketdata_options_url() == cycles.OPTION_MARKETDATA_URL
    assert urls.orders_url() == cycles.ORDERS_URL
    assert urls.option_orders_url() == cycles.OPTION_ORDERS_URL
    assert urls.marketdata_quotes_url("x").rsplit("x", 1)[0] == cycles.QUOTES_URL


def test_full_cycle_stores_every_kind_raw(fake_rh: FakeRobinhood, rh_settings: Settings, stored_session: Any,
                                          db_url: str, conn: psycopg.Connection[Any]) -> None:
    _, result = once(rh_settings, db_url)
    assert result.status == "ok", result.error
    c = cycle_row(conn)
    assert c["status"] == "ok" and c["source"] == "robinhood"
    assert set(c["outcomes"]) == {"stock_positions", "option_positions", "quotes", "account", "portfolio",
                                  "stock_orders", "option_orders"}
    # stock positions: raw pages, fractional quantity string untouched, instruments by URL
    body = snapshot(conn, "stock_positions", INDIVIDUAL)
    assert body["v"] == 1
    pos = list(payloads.results(body, "positions"))
    assert [p["quantity"] for p in pos] == ["12.00000000", "0.27364100"]
    assert pos[0] == fake_rh.positions[INDIVIDUAL][0]
    inst = payloads.response(body, "instruments")
    assert inst[pos[1]["instrument"]]["symbol"] == "MSFT"
    assert list(payloads.results(snapshot(conn, "stock_positions", IRA), "positions"))[0]["quantity"] == "3.51020000"
    # option positions with Greeks (one contract answers null Greeks)
    body = snapshot(conn, "option_positions", INDIVIDUAL)
    md = {m["instrument_id"]: m for m in payloads.results(body, "marketdata")}
    assert md[OPT_CALL]["delta"] == "0.412345"
    assert md[OPT_PUT]["delta"] is None and md[OPT_PUT]["implied_volatility"] is None
    assert set(payloads.response(body, "instruments")) == {f"{API}/options/instruments/{OPT_CALL}/",
                                                           f"{API}/options/instruments/{OPT_PUT}/"}
    assert payloads.response(snapshot(conn, "option_positions", IRA), "marketdata") == []
    # quotes for every held symbol (stocks and option underlyings), account "*"
    quotes = snapshot(conn, "quotes", payloads.QUOTES_ACCOUNT)
    assert sorted(q["symbol"] for q in payloads.results(quotes, "quotes")) == ["AAPL", "MSFT", "SPY", "TSLA"]
    # account and portfolio per account (the portfolio list lacked the IRA: asked per account)
    assert payloads.response(snapshot(conn, "account", IRA), "account")["brokerage_account_type"] == "ira_roth"
    assert payloads.response(snapshot(conn, "portfolio", IRA), "portfolio")["account"].endswith(f"/{IRA}/")
    assert fake_rh.calls[f"/portfolios/{IRA}/"] == 1
    # orders with executions, and the order watermark recorded
    orders = list(payloads.results(snapshot(conn, "stock_orders", INDIVIDUAL), "orders"))
    assert orders[0]["executions"][0]["quantity"] == "0.52341200"
    oo = list(payloads.results(snapshot(conn, "option_orders", INDIVIDUAL), "orders"))
    assert oo[0]["legs"][0]["executions"][0]["price"] == "2.45000000"
    marks = dict(((a, k), str(w)) for a, k, w in rows(conn, "SELECT account, kind, updated_gte FROM producer_order_watermarks"))
    assert marks[(INDIVIDUAL, "stock_orders")].startswith("2026-11-19 15:02:11.318")
    assert c["snapshots"] == 2 * 6 + 1
    assert c["broker_calls"] == sum(fake_rh.calls.values())
    assert c["shape_drift"] == {}


def test_pagination_follows_next_over_several_pages(
        fake_rh: FakeRobinhood, rh_settings: Settings, stored_session: Any, db_url: str,
        conn: psycopg.Connection[Any]) -> None:
    fake_rh.page_size = 1
    _, result = once(rh_settings, db_url)
    assert result.status == "ok", result.error
    pages = payloads.response(snapshot(conn, "stock_positions", INDIVIDUAL), "positions")
    assert len(pages) == 2
    assert pages[0]["next"] and pages[1]["next"] is None
    assert [p["results"][0]["quantity"] for p in pages] == ["12.00000000", "0.27364100"]
    assert fake_rh.calls["/positions/"] == 3  # two pages for the individual account, one for the IRA


def test_throttled_then_success_is_stored(fake_rh: FakeRobinhood, rh_settings: Settings, stored_session: Any,
                                          db_url: str, conn: psycopg.Connection[Any]) -> None:
    def throttle_first(path: str, q: dict[str, str], n: int) -> Any:
        if n == 1:
            return 429, {"Retry-After": "0"}, json.dumps({"detail": "Request was throttled."})
        return None

    fake_rh.hooks["/positions/"] = throttle_first
    _, result = once(rh_settings, db_url)
    assert result.status == "ok", result.error
    assert len(list(payloads.results(snapshot(conn, "stock_positions", INDIVIDUAL), "positions"))) + \
        len(list(payloads.results(snapshot(conn, "stock_positions", IRA), "positions"))) == 3
    assert fake_rh.calls["/positions/"] == 3  # one throttled, then both accounts


def test_server_error_on_page_two_stores_nothing_for_that_fetch(
        fake_rh: FakeRobinhood, rh_settings: Settings, stored_session: Any, db_url: str,
        conn: psycopg.Connection[Any]) -> None:
    fake_rh.page_size = 1

    def fail_page_two(path: str, q: dict[str, str], n: int) -> Any:
        if q.get("account_number") == INDIVIDUAL and q.get("cursor") == "1":
            return 500, {}, "<html>Internal Server Error</html>"
        return None

    fake_rh.hooks["/positions/"] = fail_page_two
    _, result = once(rh_settings, db_url)
    assert result.status == "partial"
    assert rows(conn, "SELECT count(*) FROM staging_snapshots WHERE kind = 'stock_positions' AND account = %s",
                INDIVIDUAL) == [(0,)]
    # the rest of the cycle is stored; the failure is on the cycle row, with the status
    assert len(rows(conn, "SELECT 1 FROM staging_snapshots WHERE kind = 'stock_positions' AND account = %s", IRA)) == 1
    c = cycle_row(conn)
    assert c["status"] == "partial"
    o = c["outcomes"]["stock_positions"]
    assert o["status"] == "failed" and o["http_status"] == 500
    assert "HTTP 500" in o["accounts"][INDIVIDUAL] and o["accounts"][IRA] == "ok"
    assert "stock_positions" in c["error"]
    assert rows(conn, "SELECT status, http_status FROM producer_kind_outcomes WHERE kind = 'stock_positions'") == \
        [("failed", 500)]
    # retried with backoff before giving up
    page_two = [q for p, q in fake_rh.queries if p == "/positions/" and q.get("cursor") == "1"
                and q.get("account_number") == INDIVIDUAL]
    assert len(page_two) == rh_settings.producer_max_attempts


def test_expired_session_fails_and_logs_in_again_without_hammering(
        fake_rh: FakeRobinhood, rh_settings: Settings, stored_session: Any, db_url: str,
        conn: psycopg.Connection[Any], caplog: pytest.LogCaptureFixture) -> None:
    fake_rh.hooks["/"] = lambda path, q, n: (401, {}, json.dumps({"detail": "Incorrect authentication credentials."}))
    logins: list[Any] = []

    def login_callback(request: Any) -> Any:
        logins.append(request.body)
        return 400, {}, json.dumps({"verification_workflow": {"id": "wf-1", "workflow_status":
                                                              "workflow_status_internal_pending"}})

    fake_rh.rsps.add_callback(responses.POST, f"{API}/oauth2/token/", callback=login_callback)
    producer = Producer(rh_settings, threading.Event())
    try:
        with psycopg.connect(db_url, autocommit=True) as c:
            producer.load_state(c)
            first = producer.cycle(c, {"account", "stock_positions"})
            second = producer.cycle(c, {"account", "stock_positions"})
            third = producer.cycle(c, {"account", "stock_positions"})
    finally:
        producer.close()
    assert first.status == second.status == third.status == "failed"
    assert first.outcomes["account"].http_status == 401
    assert "brokersync login" in (second.error or "")
    assert len(logins) == 1  # one login attempt inside the retry window, not one per cycle
    assert rows(conn, "SELECT count(*) FROM staging_snapshots") == [(0,)]
    assert [r[0] for r in rows(conn, "SELECT status FROM producer_cycle_runs ORDER BY id")] == ["failed"] * 3
    assert "hunter2-secret" not in caplog.text
    assert any("brokersync login" in r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)


def test_login_demanding_device_approval_without_stdin_fails_fast(rh_settings: Settings, rh_session: Any) -> None:
    from producer.logincmd import run_login

    with responses.RequestsMock() as rsps:
        rsps.add(responses.POST, f"{API}/oauth2/token/", status=400, json={
            "verification_workflow": {"id": "8a0f0e5e-1111-4a4a-9b9b-123456789abc",
                                      "workflow_status": "workflow_status_internal_pending"}})
        with pytest.raises(BrokersyncError, match="brokersync login") as err:
            run_login(Namespace(), rh_settings, io.StringIO(""))
        assert len(rsps.calls) == 1  # no polling of the approval workflow
    assert "hunter2-secret" not in str(err.value)
    assert not (rh_settings.session_path / "robinhood.pickle").exists()


def test_noninteractive_login_stores_an_owner_only_session(rh_settings: Settings, rh_session: Any) -> None:
    import os
    import stat

    from producer.login import load_session
    from producer.logincmd import run_login

    with responses.RequestsMock() as rsps:
        rsps.add(responses.POST, f"{API}/oauth2/token/", json={
            "access_token": "acc-1", "token_type": "Bearer", "expires_in": 734000,
            "refresh_token": "ref-1", "scope": "internal", "backup_code": None})
        assert run_login(Namespace(), rh_settings, io.StringIO("")) == 0
        sent = rsps.calls[0].request.body
    assert "grant_type=password" in sent and "device_token=" in sent
    stored = load_session(rh_settings.session_path)
    assert stored is not None and stored["access_token"] == "acc-1"
    if os.name != "nt":
        path = rh_settings.session_path / "robinhood.pickle"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(rh_settings.session_path.stat().st_mode) == 0o700


def test_malformed_json_fails_the_kind_and_keeps_the_body(
        fake_rh: FakeRobinhood, rh_settings: Settings, stored_session: Any, db_url: str,
        conn: psycopg.Connection[Any]) -> None:
    fake_rh.hooks["/options/aggregate_positions/"] = \
        lambda path, q, n: (200, {}, '{"next": null, "results": [{"id": "trunc') if q.get("account_numbers") == IRA else None
    _, result = once(rh_settings, db_url)
    assert result.status == "partial"
    o = cycle_row(conn)["outcomes"]["option_positions"]
    assert o["status"] == "failed" and "malformed JSON" in o["error"]
    kept = rows(conn, "SELECT payload, raw_body FROM staging_snapshots WHERE kind = 'option_positions' AND account = %s", IRA)
    assert kept == [(None, '{"next": null, "results": [{"id": "trunc')]
    assert rows(conn, "SELECT malformed FROM event_log WHERE kind = 'option_positions' AND account = %s", IRA) == [(True,)]
    # the other account's option positions are complete and stored as usual
    assert snapshot(conn, "option_positions", INDIVIDUAL)["v"] == 1


def test_instrument_cache_second_cycle_makes_no_instrument_calls(
        fake_rh: FakeRobinhood, rh_settings: Settings, stored_session: Any, db_url: str,
        conn: psycopg.Connection[Any]) -> None:
    once(rh_settings, db_url)
    # AAPL, MSFT, SPY (positions and orders) in one ?ids= request, the two contracts in another
    assert fake_rh.calls["/instruments/"] == 1 and fake_rh.calls["/options/instruments/"] == 1
    asked = sorted(q["ids"] for p, q in fake_rh.queries if p == "/instruments/")
    assert len(asked) == 1 and len(asked[0].split(",")) == 3
    assert rows(conn, "SELECT kind, count(*) FROM producer_instruments GROUP BY kind ORDER BY kind") == \
        [("option", 2), ("stock", 3)]
    fake_rh.calls.clear()
    fake_rh.queries.clear()
    _, result = once(rh_settings, db_url)  # a new producer: the cache comes from the database
    assert result.status == "ok"
    assert fake_rh.count("/instruments/") == 0 and fake_rh.count("/options/instruments/") == 0
    assert len(rows(conn, "SELECT 1 FROM staging_snapshots WHERE kind = 'stock_positions'")) == 4
    # orders are incremental: the second fetch asks from the stored watermark
    gte = [q.get("updated_at[gte]") for p, q in fake_rh.queries if p == "/orders/" and q["account_numbers"] == INDIVIDUAL]
    assert gte == ["2026-11-19T15:02:11.318000Z"]


def test_shape_drift_is_recorded_and_the_snapshot_kept(
        fake_rh: FakeRobinhood, rh_settings: Settings, stored_session: Any, db_url: str,
        conn: psycopg.Connection[Any], caplog: pytest.LogCaptureFixture) -> None:
    changed = position(IRA, fake_rh.positions[IRA][0]["instrument_id"], "3.51020000", "512.1100")
    del changed["average_buy_price"]
    fake_rh.positions[IRA] = [changed]
    _, result = once(rh_settings, db_url)
    assert result.status == "ok"
    assert cycle_row(conn)["shape_drift"] == {"positions": ["average_buy_price"]}
    assert "average_buy_price" in caplog.text
    assert list(payloads.results(snapshot(conn, "stock_positions", IRA), "positions")) == [changed]


def test_clock_drift_from_date_header_is_recorded_and_warned(
        fake_rh: FakeRobinhood, rh_settings: Settings, stored_session: Any, db_url: str,
        conn: psycopg.Connection[Any], caplog: pytest.LogCaptureFixture) -> None:
    fake_rh.date_offset = -30.0  # the broker's clock is 30 s behind ours
    once(rh_settings, db_url)
    drift = cycle_row(conn)["clock_drift_s"]
    assert 27 < drift < 33
    assert "local clock is" in caplog.text and "ahead of" in caplog.text


def test_an_unexpected_shape_fails_the_cycle_instead_of_the_process(
        fake_rh: FakeRobinhood, rh_settings: Settings, stored_session: Any, db_url: str,
        conn: psycopg.Connection[Any]) -> None:
    fake_rh.hooks["/accounts/"] = lambda path, q, n: (200, {}, json.dumps(
        {"next": None, "previous": None, "results": [{"account_number": ["not", "a", "string"]}]}))
    _, result = once(rh_settings, db_url)
    assert result.status == "failed"
    c = cycle_row(conn)
    assert c["status"] == "failed" and "no active account" in c["error"]
    assert rows(conn, "SELECT count(*) FROM staging_snapshots") == [(0,)]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_interactive_login_goes_through_robin_stocks_and_is_reused(
        rh_settings: Settings, rh_session: Any, fake_rh: FakeRobinhood, db_url: str,
        conn: psycopg.Connection[Any]) -> None:
    import os
    import stat

    from producer.logincmd import run_login

    posted: list[str] = []

    def token(request: Any) -> Any:
        posted.append(request.body)
        return 200, {}, json.dumps({"access_token": "interactive-tok", "token_type": "Bearer",
                                    "expires_in": 604800, "refresh_token": "r-2", "scope": "internal"})

    fake_rh.rsps.add_callback(responses.POST, f"{API}/oauth2/token/", callback=token)
    rh_session.headers.pop("Authorization", None)
    assert run_login(Namespace(), rh_settings, _Terminal("")) == 0
    assert len(posted) == 1 and "grant_type=password" in posted[0]
    path = rh_settings.session_path / "robinhood.pickle"  # robin_stocks's own file
    if os.name != "nt":
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    rh_session.headers.pop("Authorization", None)
    _, result = once(rh_settings, db_url)  # the service reuses it without logging in
    assert result.status == "ok" and len(posted) == 1
    seen = fake_rh.rsps.calls[-1].request.headers["Authorization"]
    assert seen == "Bearer interactive-tok"


def test_instrument_batch_ignored_by_the_broker_falls_back_to_one_by_one(
        fake_rh: FakeRobinhood, rh_settings: Settings, stored_session: Any, db_url: str,
        conn: psycopg.Connection[Any]) -> None:
    everything = [fake_rh.instruments[i] for i in sorted(fake_rh.instruments)]
    fake_rh.hooks["/instruments/"] = lambda path, q, n: (200, {}, json.dumps(
        {"next": f"{API}/instruments/?cursor=2", "previous": None, "results": everything})) \
        if path == "/instruments/" else None
    _, result = once(rh_settings, db_url)
    assert result.status == "ok", result.error
    one_by_one = [p for p in fake_rh.calls if p.startswith("/instruments/") and p != "/instruments/"]
    assert len(one_by_one) == 3 and fake_rh.calls["/instruments/"] == 1  # no walk through the catalogue
    cached = rows(conn, "SELECT symbol FROM producer_instruments WHERE kind = 'stock' ORDER BY symbol")
    assert cached == [("AAPL",), ("MSFT",), ("SPY",)]
