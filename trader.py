"""Paper, testnet and live trading of a saved run: one cycle per closed bar, through the backtest's path.

A cycle (`Trader.cycle`), after the close of bar t:

1. ingest the latest closed candles of the run's pairs into ``market.ohlcv`` (`fetch_data.fetch_range`);
2. build the history the decision core needs from the stored candles (indicators computed like a
   CSV backtest's, `market_data.from_candles`) and refuse data that does not match the run (pairs,
   timeframe, features) or lacks the bar just closed;
3. settle what is pending: paper mode executes the previous decision at the OPEN of the bar after it
   with the backtest's own execution (`backtest.execute`: fees, slippage, rebalance band, exchange
   rules), testnet/live modes reconcile their orders with the exchange by client order id;
4. read holdings (the paper account's last snapshot, or the exchange's balances), stop on the
   drawdown limit or ruin, call `Policy.decide` with the weights at bar t's close, scale the move
   towards the targets down to the order-size and turnover limits;
5. paper: record the decision (executed next cycle); testnet/live: plan orders with `Portfolio`'s rules
   (`plan_rebalance`: sells first, cash never negative, lot step and minimum notional from ccxt's
   market info), commit the decision and ALL its orders, then send them (sells, then buys) through
   `binance.orders` and record each outcome.

Because every order is committed under its deterministic client id before it is sent, and a restart
asks the exchange about every order whose outcome was not recorded before doing anything else, a kill
at any point neither loses nor duplicates an order (see trading_store.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.engine import Engine

import trading_store as store
from settings import ConfigError, env, format_ms, load_yaml, merge

log = logging.getLogger(__name__)

MODES = ("paper", "testnet", "live")
LIVE_CONFIRMATION = "I understand that live mode trades real money"
QUOTE = "USDT"
MIN_REPORT_BARS = 10  # tearsheet.py's block-bootstrap (arch's Politis-White estimate) needs 8+ returns

# Defaults of configs/trade.yaml (every key documented there; tests check both agree).
TRADE_DEFAULTS: dict[str, Any] = {
    "account": None,
    "scheduled_run": None,
    "initial_cash": None,
    "exchange": "binance",
    "history": {"start": None, "indicator_warmup_bars": 1000, "fetch_workers": 4},
    "loop": {"delay_s": 5.0, "poll_s": 5.0},
    "limits": {"max_order_notional": None, "max_turnover_per_day": None, "max_drawdown": None},
    "orders": {"cash_buffer": 0.002, "status_checks": 3, "status_check_delay_s": 1.0},
    "live": {"confirm": ""},
}


class TradeRefused(RuntimeError):
    """Trading cannot start or continue as asked; the message names the problem and the fix."""


def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """configs/trade.yaml (or ``path``) over `TRADE_DEFAULTS`; unknown keys are ConfigErrors."""
    raw = load_yaml(path or "trade.yaml")
    cfg = merge(TRADE_DEFAULTS, raw, str(path or "configs/trade.yaml"))
    return merge(cfg, dict(overrides or {}), "overrides")


def check_safety(mode: str, cfg: Mapping[str, Any]) -> None:
    """The rules before anything touches an account (see the README's safety rules)."""
    if mode not in MODES:
        raise TradeRefused(f"--mode {mode!r} unknown; use one of {MODES}")
    if mode == "paper":
        return
    if not (env("BINANCE_API_KEY") and env("BINANCE_API_SECRET")):
        raise TradeRefused(
            f"--mode {mode} needs BINANCE_API_KEY and BINANCE_API_SECRET in .env "
            f"({'spot testnet keys from testnet.binance.vision' if mode == 'testnet' else 'your keys'})"
        )
    if mode == "live":
        if cfg["live"]["confirm"] != LIVE_CONFIRMATION:
            raise TradeRefused(
                f"--mode live trades real money: set live.confirm in the trade config to exactly "
                f"{LIVE_CONFIRMATION!r} to allow it"
            )
        if (env("BINANCE_TESTNET", "false") or "").lower() in ("1", "true", "yes", "on"):
            raise TradeRefused("--mode live with BINANCE_TESTNET=true is contradictory: use --mode testnet")


def make_client(mode: str) -> Any:
    """The ccxt client for ``mode`` (binance.make_exchange: keys and base URL from .env, never logged)."""
    from binance import make_exchange

    if mode == "paper":
        return make_exchange()  # market data only
    return make_exchange(testnet=mode == "testnet")


@dataclass
class CycleResult:
    """What one cycle did."""

    bar_open_time_ms: int | None
    status: str  # decided | already_done | waiting_for_data | halted | dry_run
    message: str = ""
    orders: list[store.OrderRow] = field(default_factory=list)
    equity: float | None = None
    target_weights: np.ndarray | None = None


@dataclass
class Holdings:
    cash: float
    qty: np.ndarray
    balances: dict[str, float] | None = None


class Trader:
    """A saved run trading one account in one mode; `cycle` does one bar (see the module docstring)."""

    def __init__(
        self,
        run_dir: str | Path,
        mode: str = "paper",
        config: Mapping[str, Any] | None = None,
        *,
        engine: Engine | None = None,
        client: Any = None,
        dry_run: bool = False,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        import decision

        self.cfg = dict(config or load_config())
        check_safety(mode, self.cfg)
        self.mode, self.dry_run, self.sleep = mode, dry_run, sleep
        run_dir = Path(run_dir)
        try:
            self.policy = decision.load_policy(run_dir)
        except (FileNotFoundError, ValueError, OSError) as exc:
            raise TradeRefused(f"cannot load the run {run_dir}: {exc}") from exc
        self.run_id = run_dir.name
        self.symbols, self.timeframe = list(self.policy.symbols), self.policy.timeframe
        self.env_cfg = self.policy.env_config
        self.portfolio_cfg = dict(self.env_cfg["portfolio"])
        from binance import timeframe_ms

        self.step_ms = timeframe_ms(self.timeframe)
        self._candles: dict[str, np.ndarray] = {}  # candles read from the store so far, per pair
        self.client = client if client is not None else make_client(mode)
        self._injected_client = client is not None
        self._local = threading.local()  # the candle fetchers' own ccxt clients
        self._pool: ThreadPoolExecutor | None = None
        self._check_exchange()
        import db

        self.engine = engine or db.get_engine()
        initial_cash = self.cfg["initial_cash"]
        self.initial_cash = float(
            self.portfolio_cfg["initial_cash"] if initial_cash is None else initial_cash
        )
        self.account_name = self.cfg["account"] or f"{mode}-{self.run_id}"
        self.account = store.open_account(
            self.engine, self.account_name, mode=mode, run_id=self.run_id, symbols=self.symbols,
            timeframe=self.timeframe, initial_cash=self.initial_cash,
        )  # fmt: skip
        self.initial_cash = self.account.initial_cash  # the stored account's, if it existed
        self.gateway = None
        if mode != "paper":
            from binance.orders import OrderGateway

            self.gateway = OrderGateway(self.client)
            self.reconcile()

    # ------------------------------------------------------------------ data
    def _check_exchange(self) -> None:
        try:
            markets = self.client.load_markets()
        except Exception as exc:  # noqa: BLE001 - any failure: the exchange cannot be used
            raise TradeRefused(f"cannot load the exchange's markets: {type(exc).__name__}: {exc}") from exc
        missing = [s for s in self.symbols if s not in markets or markets[s].get("active") is False]
        if missing:
            raise TradeRefused(
                f"the run trades {missing}, which the exchange does not list as active spot "
                f"markets; this run cannot trade there"
            )
        self.markets = markets

    def exchange_time_ms(self) -> int:
        return int(self.client.fetch_time())

    def ingest(self, now_ms: int) -> None:
        """Store the closed candles of every pair up to ``now_ms`` (resumes after the newest stored)."""
        import fetch_data
        from settings import parse_time_ms

        start = self.cfg["history"]["start"]
        warmup = self.cfg["history"]["indicator_warmup_bars"]
        if start is not None:
            default_since = parse_time_ms(start, "history.start")
        else:
            default_since = now_ms - (self.policy.history_bars + int(warmup or 0) + 2) * self.step_ms

        def fetch(symbol: str) -> None:
            try:
                fetch_data.fetch_range(
                    self._fetch_client(), self.engine, symbol, self.timeframe, exchange=self.cfg["exchange"],
                    default_since_ms=default_since, policy=fetch_data.RetryPolicy(max_retries=3),
                    job_id=f"trade:{self.account_name}", sleep=self.sleep,
                )  # fmt: skip
            except fetch_data.FetchError as exc:
                log.error("%s: candles not updated (%s); the cycle will wait for them", symbol, exc)

        workers = int(self.cfg["history"]["fetch_workers"])
        if workers <= 1 or self._injected_client:
            for symbol in self.symbols:
                fetch(symbol)
            return
        # The pairs' fetches wait on the network: overlap them (one ccxt client per worker thread).
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="trade-fetch")
        list(self._pool.map(fetch, self.symbols))

    def _fetch_client(self) -> Any:
        if self._injected_client:
            return self.client
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = make_client(self.mode)
        return client

    def history(self, end_ms: int) -> Any:
        """The stored candles of every pair with open time < ``end_ms`` as aligned market arrays.

        Candles already read are kept in memory (stored candles never change: only closed ones are
        stored), so a cycle reads just the new ones, in one query for all pairs."""
        import db
        import market_data
        from settings import parse_time_ms

        warmup = self.cfg["history"]["indicator_warmup_bars"]
        start = self.cfg["history"]["start"]
        start_ms = None if start is None else parse_time_ms(start, "history.start")
        if warmup is not None:
            window_start = end_ms - (self.policy.history_bars + int(warmup)) * self.step_ms
            start_ms = window_start if start_ms is None else max(start_ms, window_start)
        cached = self._candles
        after = {s: (int(cached[s][-1, 0]) if s in cached and len(cached[s]) else None) for s in self.symbols}
        if any(v is None for v in after.values()):
            cached.clear()
            after = dict.fromkeys(self.symbols, None if start_ms is None else start_ms - 1)
        new = db.read_candles_since(
            self.engine, self.cfg["exchange"], self.symbols, self.timeframe, after, end_ms
        )
        candles = []
        for symbol in self.symbols:
            rows = np.concatenate([cached[symbol], new[symbol]]) if symbol in cached else new[symbol]
            if start_ms is not None:
                rows = rows[rows[:, 0] >= start_ms]
            cached[symbol] = rows
            candles.append(rows[rows[:, 0] < end_ms])
        if any(len(c) == 0 for c in candles):
            empty = [s for s, c in zip(self.symbols, candles, strict=True) if len(c) == 0]
            raise TradeRefused(
                f"no stored candles for {empty} before {format_ms(end_ms)}: check the exchange"
            )
        return market_data.from_candles(self.symbols, self.timeframe, candles, {"source": "db candles"})

    # ------------------------------------------------------------------ the cycle
    def cycle(self, now_ms: int | None = None) -> CycleResult:
        """One decision for the last closed bar at the exchange's time (see the module docstring)."""
        from binance import floor_to_timeframe
        from settings import ConfigError as SettingsError

        now_ms = self.exchange_time_ms() if now_ms is None else now_ms
        bar = floor_to_timeframe(now_ms, self.timeframe) - self.step_ms  # the last closed bar
        account = store.get_account(self.engine, self.account_name)
        if account is not None and account.halted_reason:
            log.error(
                "account %s is halted: %s (trade.py --resume-halted clears it)",
                self.account_name,
                account.halted_reason,
            )
            return CycleResult(bar, "halted", account.halted_reason)
        self.ingest(now_ms)
        history = self.history(bar + self.step_ms)
        try:
            self.policy.check_market(history, "the live data")
        except (SettingsError, ConfigError, ValueError) as exc:
            raise TradeRefused(f"{exc}; this run cannot trade these markets") from exc
        last = int(history.open_time_ms[-1])
        if last != bar:
            message = (
                f"the bar {format_ms(bar)} is not stored for every pair yet (aligned data ends at "
                f"{format_ms(last)}); no decision this cycle"
            )
            log.warning(message)
            return CycleResult(bar, "waiting_for_data", message)
        if history.n_bars < self.policy.history_bars:
            raise TradeRefused(
                f"the decision needs {self.policy.history_bars} aligned bars, the store has "
                f"{history.n_bars}; set history.start earlier or wait for more candles"
            )
        close = history.close[-1]
        if self.mode == "paper":
            holdings, fees = self._settle_paper(history)
        else:
            self._settle_stale(bar)
            holdings, fees = self._exchange_holdings(), 0.0
        existing = store.get_decision(self.engine, self.account_name, bar)
        if existing is not None and not self.dry_run:
            if self.mode != "paper" and existing.status == "open":
                self._send_orders(bar)
            return CycleResult(bar, "already_done", f"bar {format_ms(bar)} was already decided")

        from backtest import close_weights

        value, weights = close_weights(holdings.qty, holdings.cash, close)
        halted = self._check_stops(value, bar)
        if halted:
            if not self.dry_run:
                with self.engine.begin() as conn:
                    self._write_marks(conn, bar, holdings, close, value, weights, fees)
            return CycleResult(bar, "halted", halted, equity=value)
        decided = self.policy.decide(history, weights)
        target, scale, reason = self._limit(decided.target_weights, weights, value, bar)
        orders = (
            [] if self.mode == "paper" else self._plan_orders(bar, target, weights, holdings, close, value)
        )
        if self.dry_run:
            preview = orders or self._preview_paper(bar, target, holdings, close)
            return CycleResult(bar, "dry_run", format_orders(preview, bar), preview, value, target)
        with self.engine.begin() as conn:
            store.insert_decision(
                conn, self.account_name, bar, run_id=self.run_id, calls=decided.calls,
                target_weights=decided.target_weights, weights_before=weights, limit_scale=scale,
                limit_reason=reason, status="open" if (self.mode == "paper" or orders) else "done",
            )  # fmt: skip
            for order in orders:
                store.insert_order(conn, self.account_name, order)
            self._write_marks(conn, bar, holdings, close, value, weights, fees)
        log.info(
            "decided after %s: targets %s%s; %s",
            format_ms(bar),
            _fmt_weights(target, self.symbols),
            f" (limited x{scale:.3f}: {reason})" if reason else "",
            "executes at the next open (paper)" if self.mode == "paper" else f"{len(orders)} order(s)",
        )
        if orders:
            self._send_orders(bar, fresh={o.client_order_id for o in orders})
        return CycleResult(bar, "decided", "", orders, value, target)

    def _write_marks(
        self,
        conn: Any,
        bar: int,
        holdings: Holdings,
        close: np.ndarray,
        value: float,
        weights: np.ndarray,
        fees: float,
    ) -> None:
        store.write_snapshot(
            conn, self.account_name, bar, holdings.cash, holdings.qty, close, holdings.balances
        )
        store.write_equity(conn, self.account_name, bar, value, weights, fees)

    # ------------------------------------------------------------------ limits and stops
    def _check_stops(self, value: float, bar: int) -> str | None:
        """Halt the account on ruin or the drawdown stop; returns the reason, or None to go on."""
        reason = None
        _, curve = store.equity_curve(self.engine, self.account_name)
        # The starting capital: the paper account's cash, or an exchange account's first recorded equity.
        initial = self.initial_cash if self.mode == "paper" else float(curve[0]) if len(curve) else value
        ruin = float(self.env_cfg["ruin_fraction"]) * initial
        if value <= ruin:
            reason = (
                f"equity {value:,.2f} at {format_ms(bar)} is at or below the ruin level "
                f"{ruin:,.2f} (env.ruin_fraction)"
            )
        max_dd = self.cfg["limits"]["max_drawdown"]
        if reason is None and max_dd is not None:
            peak = max([initial, value, *curve.tolist()])
            drawdown = 1.0 - value / peak
            if drawdown >= float(max_dd):
                reason = (
                    f"drawdown {drawdown:.1%} from the peak {peak:,.2f} at {format_ms(bar)} reached "
                    f"limits.max_drawdown {float(max_dd):.1%}"
                )
        if reason is not None:
            log.error("trading halted: %s", reason)
            if not self.dry_run:
                store.halt(self.engine, self.account_name, reason)
        return reason

    def _limit(
        self, target: np.ndarray, weights: np.ndarray, value: float, bar: int
    ) -> tuple[np.ndarray, float, str | None]:
        """Scale the move from ``weights`` to ``target`` down (one factor, so weights stay valid and the
        order rules still hold) to the order-size and daily-turnover limits."""
        limits = self.cfg["limits"]
        move = np.abs(target[:-1] - weights[:-1]) * value  # quote per pair
        scale, reasons = 1.0, []
        if limits["max_order_notional"] is not None and move.max(initial=0.0) > float(
            limits["max_order_notional"]
        ):
            scale = float(limits["max_order_notional"]) / float(move.max())
            reasons.append(f"an order of {move.max():,.2f} > limits.max_order_notional")
        if limits["max_turnover_per_day"] is not None and move.sum() > 0:
            traded = store.traded_notional_since(
                self.engine, self.account_name, bar + self.step_ms - 86_400_000
            )
            budget = max(float(limits["max_turnover_per_day"]) * value - traded, 0.0)
            if move.sum() * scale > budget:
                scale = budget / float(move.sum())
                reasons.append(
                    f"{traded:,.2f} traded in 24 h, budget left {budget:,.2f} (limits.max_turnover_per_day)"
                )
        if scale >= 1.0:
            return target, 1.0, None
        limited = weights + scale * (target - weights)
        log.warning("orders scaled by %.3f: %s", scale, "; ".join(reasons))
        return limited, scale, "; ".join(reasons)

    # ------------------------------------------------------------------ tearsheet
    def report(self, out_dir: str | Path) -> dict[str, Any]:
        """The account's tearsheet over the bars it marked (performance.write_report: equity, drawdowns,
        allocation, per-pair contribution, calls), and fills against decisions with the slippage paid
        against the backtest's assumption (``env.portfolio.slippage_bps``). Returns the summary."""
        import metrics
        import performance
        from backtest import Recorder

        marks = store.snapshots(self.engine, self.account_name)
        if len(marks) < MIN_REPORT_BARS:  # the report's bootstrap needs a few returns
            raise TradeRefused(
                f"account {self.account_name} has {len(marks)} marked bar(s); the report "
                f"needs at least {MIN_REPORT_BARS}"
            )
        first, last = marks[0].bar_open_time_ms, marks[-1].bar_open_time_ms
        market = self.history(last + self.step_ms).slice_time(first, last + self.step_ms)
        holder = _Held(marks[0].cash, marks[0].qty)
        rec = Recorder(self.account_name, market, holder)
        rec.calls = np.zeros((market.n_bars, market.n_pairs), dtype=np.int8)
        by_bar = {m.bar_open_time_ms: m for m in marks}
        index = {int(t): i for i, t in enumerate(market.open_time_ms.tolist())}
        for decided in store.decisions(self.engine, self.account_name):
            if decided.bar_open_time_ms in index:
                rec.calls[index[decided.bar_open_time_ms]] = decided.calls
        fills = store.fills(self.engine, self.account_name)
        notional = slippage = base_fees = 0.0
        for fill in fills:
            t = index.get(int(fill["ts_ms"]) // self.step_ms * self.step_ms)
            if t is None:
                continue
            i = self.symbols.index(fill["symbol"])
            if fill["fee_asset"] == QUOTE:
                rec.fees[t, i] += fill["fee"]
            else:  # charged in the asset bought: already missing from the holdings; valued for the summary
                base_fees += fill["fee"] * fill["price"]
            rec.slippage[t, i] += fill["slippage"]
            notional += fill["qty"] * fill["price"]
            slippage += fill["slippage"]
        for t, bar in enumerate(market.open_time_ms.tolist()):
            if bar in by_bar:  # bars without a mark (the trader was down) keep the holdings before them
                holder.cash, holder.qty = by_bar[bar].cash, by_bar[bar].qty
            rec.bar(t)
        record = rec.record()
        orders = store.orders(self.engine, self.account_name)
        summary = {
            "bars": market.n_bars,
            "decisions": len(store.decisions(self.engine, self.account_name)),
            "orders": {
                status: sum(o.status == status for o in orders)
                for status in sorted({o.status for o in orders})
            },
            "fills": len(fills),
            "fees_quote": float(rec.fees.sum()) + base_fees,
            "slippage_bps_paid": 1e4 * slippage / notional if notional else 0.0,
            "slippage_bps_assumed": float(self.portfolio_cfg.get("slippage_bps", 0.0)),
        }
        notes = {"run": self.run_id, "mode": self.mode, **summary}
        title = f"{self.mode.capitalize()} trading of {self.run_id} ({self.account_name})"
        performance.write_report(
            out_dir,
            {self.account_name: record},
            metrics.periods_per_year(self.timeframe),
            market.close,
            title=title,
            notes=notes,
        )
        return summary

    # ------------------------------------------------------------------ paper
    def _paper_portfolio(self) -> Any:
        from backtest import make_portfolio

        pf = make_portfolio(self.symbols, self.portfolio_cfg)
        pf.record_fills = True  # fill prices for the fills table
        snapshot = store.latest_snapshot(self.engine, self.account_name)
        if snapshot is None:
            pf.reset(self.initial_cash)
        else:
            pf.start_from(snapshot.cash, snapshot.qty, snapshot.prices)
        return pf

    def _settle_paper(self, history: Any) -> tuple[Holdings, float]:
        """Execute open paper decisions at the open of the bar after each (the backtest's `execute`)."""
        from backtest import execute

        pf = self._paper_portfolio()
        fees_now = 0.0
        times = history.open_time_ms
        band = float(self.env_cfg["meta"]["rebalance_band"])
        for pending in store.decisions(self.engine, self.account_name, status="open"):
            e = int(np.searchsorted(times, pending.bar_open_time_ms, side="right"))
            if e >= history.n_bars:
                continue  # its execution bar has not closed yet
            target = _applied(pending)
            volume = history.volume[e] if pf.impact_bps > 0.0 else None
            turnover, fees, _ = execute(pf, target, history.open[e], volume, int(times[e]), band)
            orders, fills = self._paper_fills(
                pending.bar_open_time_ms, pf, history.open[e], int(times[e]), turnover > 0.0
            )
            fees_bar = float(np.sum(fees))
            if e == history.n_bars - 1:
                fees_now += fees_bar
            if self.dry_run:
                continue
            value, weights = _close_weights(pf, history.close[e])
            with self.engine.begin() as conn:
                for order, order_fills in zip(orders, fills, strict=True):
                    store.insert_order(conn, self.account_name, order)
                    store.insert_fills(conn, self.account_name, order, order_fills)
                store.set_decision_status(conn, self.account_name, pending.bar_open_time_ms, "done")
                holdings = Holdings(pf.cash, pf.qty.copy())
                self._write_marks(conn, int(times[e]), holdings, history.close[e], value, weights, fees_bar)
            log.info(
                "paper: the decision of %s executed at the open of %s: %d fill(s), fees %.2f; equity %.2f",
                format_ms(pending.bar_open_time_ms),
                format_ms(int(times[e])),
                len(orders),
                fees_bar,
                value,
            )
        return Holdings(pf.cash, pf.qty.copy()), fees_now

    def _paper_fills(
        self, bar: int, pf: Any, open_prices: np.ndarray, ts_ms: int, traded: bool
    ) -> tuple[list[store.OrderRow], list[list[store.FillRow]]]:
        """The orders and fills of the paper rebalance just made (its Portfolio's fill log)."""
        if not traded:
            return [], []
        log_ = {int(f["pair"]): f for f in pf.fill_log() if f["step"] == pf.steps - 1}  # this rebalance
        signed = np.zeros(len(self.symbols))
        for i, fill in log_.items():
            signed[i] = float(fill["side"]) * float(fill["qty"])
        orders = self._orders(bar, signed, open_prices)
        fills = []
        for order in orders:
            fill = log_[self.symbols.index(order.symbol)]
            order.status, order.filled_qty, order.avg_price = (
                "filled",
                float(fill["qty"]),
                float(fill["price"]),
            )
            fills.append(
                [
                    store.FillRow(
                        "paper",
                        float(fill["qty"]),
                        float(fill["price"]),
                        float(fill["fee"]),
                        QUOTE,
                        ts_ms,
                        float(fill["slippage"]),
                    )
                ]
            )
        return orders, fills

    def _preview_paper(
        self, bar: int, target: np.ndarray, holdings: Holdings, close: np.ndarray
    ) -> list[store.OrderRow]:
        """The orders a paper decision would execute if the next open equalled this close."""
        from backtest import make_portfolio

        pf = make_portfolio(self.symbols, self.portfolio_cfg)
        pf.start_from(holdings.cash, holdings.qty, close)
        plan = pf.plan_rebalance(
            target, close, volumes=None if pf.impact_bps == 0 else np.full(len(close), np.inf)
        )
        return self._orders(bar, plan.qty, close)

    # ------------------------------------------------------------------ testnet / live
    def _exchange_holdings(self) -> Holdings:
        balances = self.gateway.balances()
        qty = np.array([balances.get(s.split("/")[0], 0.0) for s in self.symbols])
        return Holdings(balances.get(QUOTE, 0.0), qty, {k: v for k, v in balances.items() if v})

    def _plan_orders(
        self,
        bar: int,
        target: np.ndarray,
        weights: np.ndarray,
        holdings: Holdings,
        close: np.ndarray,
        value: float,
    ) -> list[store.OrderRow]:
        """Orders towards ``target`` with Portfolio's rules and the exchange's lot sizes and minimums."""
        from Portfolio import Portfolio

        band = float(self.env_cfg["meta"]["rebalance_band"])
        turnover = 0.5 * float(np.abs(target - weights).sum())  # the backtest's rebalance band
        if turnover <= band:
            log.info("turnover %.4f within the rebalance band %.4f: no orders", turnover, band)
            return []
        cfg = {**self.portfolio_cfg, "use_market_rules": True, "record_fills": False}
        pf = Portfolio.from_config(self.symbols, cfg, markets=self.markets, where="env.portfolio")
        # Keep a little cash unspent: fills come at the next price, not at this close.
        buffer = float(self.cfg["orders"]["cash_buffer"]) * value
        pf.start_from(max(holdings.cash - buffer, 0.0), holdings.qty, close)
        volumes = None if pf.impact_bps == 0 else np.full(len(close), np.inf)
        plan = pf.plan_rebalance(target, close, volumes)
        return self._orders(bar, plan.qty, close)

    def _orders(self, bar: int, qty: np.ndarray, prices: np.ndarray) -> list[store.OrderRow]:
        """Order rows (sells first) for signed base quantities per pair, priced at ``prices``."""
        from binance.orders import client_order_id

        orders = []
        for i, dq in enumerate(qty.tolist()):
            if dq == 0.0:
                continue
            side, symbol = ("buy" if dq > 0 else "sell"), self.symbols[i]
            cid = client_order_id(self.account_name, bar, symbol, side)
            orders.append(store.OrderRow(cid, bar, symbol, side, abs(dq), float(prices[i])))
        return sorted(orders, key=lambda o: o.side != "sell")

    def _send_orders(self, bar: int, fresh: set[str] | None = None) -> None:
        """Send the bar's unsettled orders: sells, then (only when every sell is settled) buys."""
        fresh = fresh or set()
        pending = store.orders(self.engine, self.account_name, bar, store.PENDING_ORDER_STATES)
        for order in [o for o in pending if o.side == "sell"]:
            self._send(order, order.client_order_id in fresh)
        unsettled = store.orders(self.engine, self.account_name, bar, store.PENDING_ORDER_STATES)
        if any(o.side == "sell" for o in unsettled):
            log.error(
                "a sell's outcome is still unknown: buys of %s wait for the next reconcile", format_ms(bar)
            )
            return
        for order in [o for o in pending if o.side == "buy"]:
            self._send(order, order.client_order_id in fresh)
        self._close_decision_if_settled(bar)

    def _close_decision_if_settled(self, bar: int) -> None:
        if not store.orders(self.engine, self.account_name, bar, store.PENDING_ORDER_STATES):
            with self.engine.begin() as conn:
                store.set_decision_status(conn, self.account_name, bar, "done")

    def _send(self, order: store.OrderRow, fresh: bool) -> None:
        """Send one order unless the exchange already has it; record the outcome."""
        from binance.orders import OrderRejected, OrderStatusUnknown

        what = f"{order.side} {order.amount:g} {order.symbol} ({order.client_order_id})"
        checks = int(self.cfg["orders"]["status_checks"])
        if not fresh:  # it may have reached the exchange before a crash or a timeout
            try:
                found = self.gateway.find(order.symbol, order.client_order_id)
            except OrderStatusUnknown as exc:
                log.error(
                    "order %s: cannot ask the exchange about it (%s); left for the next reconcile", what, exc
                )
                return
            if found is not None:
                log.info(
                    "order %s: already on the exchange (%s), recorded without sending it again",
                    what,
                    found.status,
                )
                self._record(order, found)
                return
        for attempt in range(checks + 1):
            try:
                report = self.gateway.place_market(
                    order.symbol, order.side, order.amount, order.client_order_id
                )
            except OrderRejected as exc:
                log.warning("order %s rejected: %s", what, exc)
                with self.engine.begin() as conn:
                    store.update_order(conn, order.client_order_id, "rejected", error=str(exc)[:500])
                return
            except OrderStatusUnknown as exc:
                log.warning("order %s: outcome unknown (%s); asking the exchange by client id", what, exc)
                with self.engine.begin() as conn:
                    store.update_order(conn, order.client_order_id, "unknown", error=str(exc)[:500])
                report = self._resolve(order, what)
                if report is None:
                    if attempt < checks:
                        log.warning(
                            "order %s never reached the exchange: sending it again with the same id", what
                        )
                    continue
                if report == "unreachable":
                    return
            self._record(order, report)
            return
        log.error("order %s: not placed after %d attempts; left for the next cycle", what, checks + 1)

    def _resolve(self, order: store.OrderRow, what: str) -> Any:
        """Ask the exchange about an order whose outcome is unknown: its report, None when it does not
        exist there, or "unreachable" when no answer came."""
        from binance.orders import OrderStatusUnknown

        for _ in range(int(self.cfg["orders"]["status_checks"])):
            self.sleep(float(self.cfg["orders"]["status_check_delay_s"]))
            try:
                return self.gateway.find(order.symbol, order.client_order_id)
            except OrderStatusUnknown as exc:
                log.warning("order %s: status query failed (%s)", what, exc)
        log.error("order %s: outcome still unknown; recorded as unknown, reconciled on the next start", what)
        return "unreachable"

    def _record(self, order: store.OrderRow, report: Any) -> None:
        status = {
            "closed": "filled",
            "canceled": "canceled",
            "expired": "canceled",
            "rejected": "rejected",
        }.get(report.status, "unknown")
        sign = 1.0 if order.side == "buy" else -1.0
        fills = [
            store.FillRow(
                f.trade_id,
                f.qty,
                f.price,
                f.fee,
                f.fee_asset,
                f.ts_ms,
                slippage=sign * (f.price - order.ref_price) * f.qty,
            )
            for f in report.fills
        ]
        with self.engine.begin() as conn:
            store.update_order(
                conn,
                order.client_order_id,
                status,
                exchange_order_id=report.exchange_order_id,
                filled_qty=report.filled,
                avg_price=report.average_price,
            )
            store.insert_fills(conn, self.account_name, order, fills)
        log.info(
            "order %s %s %g %s: %s, filled %g at %s",
            order.client_order_id,
            order.side,
            order.amount,
            order.symbol,
            status,
            report.filled,
            report.average_price,
        )

    def reconcile(self) -> None:
        """Before deciding anything: ask the exchange about every order whose outcome was not recorded,
        and cancel any order of ours still open there (market orders should never be)."""
        from binance.orders import CLIENT_ID_PREFIX, OrderStatusUnknown

        pending = store.orders(self.engine, self.account_name, statuses=store.PENDING_ORDER_STATES)
        for order in pending:
            try:
                found = self.gateway.find(order.symbol, order.client_order_id)
            except OrderStatusUnknown as exc:
                log.error("reconcile: no answer about %s (%s); it stays unknown", order.client_order_id, exc)
                continue
            if found is not None:
                log.info(
                    "reconcile: %s %s %s was accepted by the exchange (%s): recording it",
                    order.client_order_id,
                    order.side,
                    order.symbol,
                    found.status,
                )
                self._record(order, found)
        for symbol in self.symbols:
            for report in self.gateway.open_orders(symbol):
                if report.client_order_id.startswith(CLIENT_ID_PREFIX):
                    log.warning(
                        "reconcile: our order %s is still open on %s: cancelling it",
                        report.client_order_id,
                        symbol,
                    )
                    self.gateway.cancel(symbol, report.client_order_id)
        if pending:
            log.info("reconcile: %d order(s) checked", len(pending))

    def _settle_stale(self, bar: int) -> None:
        """Orders of earlier bars still unsent are not sent late: they become ``not_sent``."""
        from binance.orders import OrderStatusUnknown

        for pending in store.decisions(self.engine, self.account_name, status="open"):
            if pending.bar_open_time_ms >= bar:
                continue
            for order in store.orders(
                self.engine, self.account_name, pending.bar_open_time_ms, store.PENDING_ORDER_STATES
            ):
                try:
                    found = self.gateway.find(order.symbol, order.client_order_id)
                except OrderStatusUnknown as exc:
                    log.error(
                        "order %s: no answer about it (%s); it stays pending", order.client_order_id, exc
                    )
                    continue
                if found is not None:
                    self._record(order, found)
                    continue
                log.warning(
                    "order %s of %s never reached the exchange; not sending it late",
                    order.client_order_id,
                    format_ms(pending.bar_open_time_ms),
                )
                with self.engine.begin() as conn:
                    store.update_order(conn, order.client_order_id, "not_sent")
            self._close_decision_if_settled(pending.bar_open_time_ms)


class _Held:
    """Holdings as `backtest.Recorder` reads them from a portfolio (cash, qty, value)."""

    def __init__(self, cash: float, qty: np.ndarray) -> None:
        self.cash, self.qty = cash, qty

    def value(self, prices: np.ndarray) -> float:
        return self.cash + float(self.qty @ prices)


def _applied(decision_row: store.DecisionRow) -> np.ndarray:
    """The weights a stored decision trades to: its targets, moved only ``limit_scale`` of the way."""
    if decision_row.limit_scale >= 1.0:
        return decision_row.target_weights
    before = decision_row.weights_before
    return before + decision_row.limit_scale * (decision_row.target_weights - before)


def _close_weights(pf: Any, close: np.ndarray) -> tuple[float, np.ndarray]:
    from backtest import close_weights

    return close_weights(pf.qty, pf.cash, close)


def run_once(
    run_dir: str | Path | None = None, mode: str = "paper", config: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """One cycle of ``run_dir`` (default: ``scheduled_run`` of the trade config), for schedulers
    (the paper_trading DAG); returns a JSON-able summary."""
    cfg = dict(config or load_config())
    run_dir = run_dir or cfg["scheduled_run"]
    if not run_dir:
        raise TradeRefused(
            "no run to trade: set scheduled_run in configs/trade.yaml (e.g. saved_models/NAME)"
        )
    result = Trader(run_dir, mode, cfg).cycle()
    return {
        "bar_open_time_ms": result.bar_open_time_ms,
        "status": result.status,
        "message": result.message,
        "orders": len(result.orders),
        "equity": result.equity,
    }


def run_loop(trader: Trader, *, max_cycles: int | None = None) -> None:
    """Cycle after every bar close (plus ``loop.delay_s``), watching the exchange's clock."""
    delay_ms = int(float(trader.cfg["loop"]["delay_s"]) * 1000)
    poll_s = float(trader.cfg["loop"]["poll_s"])
    cycles = 0
    while max_cycles is None or cycles < max_cycles:
        result = trader.cycle()
        cycles += 1
        log.info(
            "cycle %d: %s %s %s", cycles, format_ms(result.bar_open_time_ms), result.status, result.message
        )
        if result.status == "halted":
            return
        wake = (result.bar_open_time_ms or 0) + 2 * trader.step_ms + delay_ms  # next bar's close + delay
        while trader.exchange_time_ms() < wake:
            trader.sleep(poll_s)


def format_orders(orders: list[store.OrderRow], bar: int) -> str:
    """A table of orders for people (the --dry-run preview)."""
    lines = [f"orders after the close of {format_ms(bar)} (dry run: nothing sent, nothing recorded):"]
    if not orders:
        lines.append("  none")
    for o in orders:
        lines.append(
            f"  {o.side:<4} {o.amount:>16.8f} {o.symbol:<10} ~{o.ref_price:>14.6f}  "
            f"notional ~{o.amount * o.ref_price:>12.2f}  {o.client_order_id}"
        )
    return "\n".join(lines)


def _fmt_weights(weights: np.ndarray, symbols: list[str]) -> str:
    names = [s.split("/")[0] for s in symbols] + ["cash"]
    return " ".join(f"{n}={w:.3f}" for n, w in zip(names, weights.tolist(), strict=True))
