"""Trading latency: from a bar's close to the last order sent, 10 pairs, candle fetch included.

    python bench/bench_trade_latency.py [--run DIR] [--bars 10]

Against the local fake exchange (testnet mode, signed requests, an account with 100,000 USDT) and
PostgreSQL (DATABASE_URL, or a scratch database on the embedded server). Each timed bar: the fake
exchange's clock is set one minute after the bar's close, then `Trader.cycle` runs: ingest the closed
candle of each pair (`fetch_data.fetch_range`), read the history from the store, reconcile/holdings,
`Policy.decide`, plan, record, send the orders (sells, then buys). Phases are timed inside the same
cycles. The reference, measured in the same run on the same fake exchange with the same ccxt rate
limiter: the exchange round trips alone (10 kline fetches + 10 market orders through a bare ccxt
client), the floor any implementation pays. Paper mode (no orders: bar close -> decision recorded)
is timed too. Without ``--run`` a one-iteration run over 10 synthetic pairs is trained first (not
timed; inference costs the same whatever the weights). Aim (issue 21): under 2 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PAIRS = [
    "BTC/USDT",
    "ETH/USDT",
    "BNB/USDT",
    "ADA/USDT",
    "XRP/USDT",
    "LTC/USDT",
    "LINK/USDT",
    "DOT/USDT",
    "DOGE/USDT",
    "TRX/USDT",
]
H = 3_600_000
KEY, SECRET = "bench-key", "bench-secret"


def write_candles(folder: Path, bars: int = 1_000) -> None:
    from binance.fake_exchange import SyntheticSource

    SyntheticSource(PAIRS, "1h", bars=bars, seed=7).write_csv(folder)


def train(folder: Path, out: Path) -> Path:
    source = f"{{kind: csv, path: {folder}, symbols: [{', '.join(PAIRS)}], timeframe: 1h}}"
    splits = (
        '{train: {start: "2020-01-02", end: "2020-01-20"}, validation: {start: "2020-01-20", '
        'end: "2020-01-25"}, test: {start: "2020-01-25", end: "2020-02-11"}}'
    )
    cmd = [
        sys.executable,
        str(ROOT / "Train.py"),
        "--config",
        "configs/smoke.yaml",
        "--run-id",
        "latency",
        "--saved-models",
        str(out / "saved"),
        "--logs",
        str(out / "logs"),
        "--set",
        f"data.source={source}",
        "--set",
        f"data.splits={splits}",
        "--set",
        "run.iterations=1",
    ]
    print("training a one-iteration run over 10 synthetic pairs (not timed) ...", flush=True)
    for _ in range(3):  # Ray gives its local node a fixed 30 s to start: a busy machine can miss it
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if "timed out during startup" not in proc.stderr:
            break
    if proc.returncode != 0:
        raise SystemExit(f"training failed:\n{proc.stderr[-3000:]}")
    return out / "saved" / "latency"


class Timer:
    """Wraps bound methods to add their wall time to named phases."""

    def __init__(self) -> None:
        self.phases: dict[str, float] = {}

    def wrap(self, obj: object, name: str, phase: str) -> None:
        inner = getattr(obj, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.phases[phase] = self.phases.get(phase, 0.0) + time.perf_counter() - start

        setattr(obj, name, timed)


def measure(run_dir: Path, folder: Path, bars: int, engine) -> dict[str, list[float]]:
    import market_data
    import trader
    from binance import make_exchange
    from binance.fake_exchange import FakeExchange
    from binance.fake_orders import FakeAccount

    market = market_data.from_csv_dir(folder, PAIRS, "1h")
    results: dict[str, list[float]] = {}

    def add(name: str, value: float) -> None:
        results.setdefault(name, []).append(value)

    with FakeExchange(data_dir=folder) as fake:
        FakeAccount.attach(fake, {"USDT": 100_000.0}, api_key=KEY, secret=SECRET)
        os.environ.update(
            {"BINANCE_BASE_URL": fake.url, "BINANCE_API_KEY": KEY, "BINANCE_API_SECRET": SECRET}
        )
        first = 800  # enough history for the default normalization window (720 bars)
        stamp = int(time.time())
        for mode in ("testnet", "paper"):
            cfg = trader.load_config(None, {"account": f"bench-{mode}-{stamp}"})
            fake.set_now(int(market.open_time_ms[first]) + H + 60_000)
            bot = trader.Trader(run_dir, mode, cfg, engine=engine)
            bot.cycle()  # warm-up: first ingest of the whole history, caches
            timer = Timer()
            timer.wrap(bot, "ingest", "fetch candles (10 pairs)")
            timer.wrap(bot, "history", "read history from the store")
            timer.wrap(bot.policy, "decide", "Policy.decide")
            if mode == "testnet":
                timer.wrap(bot, "_exchange_holdings", "balances")
                timer.wrap(bot, "_send_orders", "send orders")
            for k in range(first + 1, first + 1 + bars):
                fake.set_now(int(market.open_time_ms[k]) + H + 60_000)
                timer.phases.clear()
                start = time.perf_counter()
                result = bot.cycle()
                total = time.perf_counter() - start
                add(
                    f"{mode}: bar close -> {'last order sent' if mode == 'testnet' else 'decision recorded'}",
                    total,
                )
                if mode == "testnet":
                    add("testnet: orders per bar", float(len(result.orders)))
                for phase, seconds in timer.phases.items():
                    add(f"{mode}:   {phase}", seconds)
        # Reference: the exchange round trips alone, same fake, same rate limiter.
        client = make_exchange(base_url=fake.url, api_key=KEY, secret=SECRET)
        client.load_markets()
        for k in range(first + 1 + bars, first + 1 + 2 * bars):
            fake.set_now(int(market.open_time_ms[k]) + H + 60_000)
            start = time.perf_counter()
            for symbol in PAIRS:
                client.fetch_ohlcv(symbol, "1h", since=int(market.open_time_ms[k]), limit=1)
            for symbol in PAIRS:
                price = float(market.close[k, PAIRS.index(symbol)])
                client.create_order(
                    symbol, "market", "buy", float(client.amount_to_precision(symbol, 20.0 / price))
                )
            add("reference: 10 kline fetches + 10 market orders, bare ccxt", time.perf_counter() - start)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", type=Path, default=None, help="a run over the 10 pairs (default: train one)")
    parser.add_argument("--bars", type=int, default=10, help="timed bars per mode")
    args = parser.parse_args(argv)
    import torch

    import db

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="bench_trade_") as tmp:
        folder = Path(tmp) / "candles"
        folder.mkdir()
        write_candles(folder)
        run_dir = args.run or train(folder, Path(tmp))
        url = os.environ.get("DATABASE_URL") or None
        with db.scratch_database("bench_trade", url) as scratch:
            os.environ["DATABASE_URL"] = scratch
            results = measure(run_dir, folder, args.bars, db.get_engine(scratch))
    print(
        f"\nTrading latency, {args.bars} bars per row, 10 pairs, wall seconds (load average "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)\n"
    )
    print(f"| {'what':<62} | median | max |")
    print(f"|{'-' * 64}|--------|-----|")
    for name, values in results.items():
        if "orders per bar" in name:
            print(f"| {name:<62} | {statistics.median(values):6.1f} | {max(values):.0f} |")
        else:
            print(f"| {name:<62} | {statistics.median(values):6.3f} | {max(values):.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
