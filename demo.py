"""`make demo`: candles -> PostgreSQL -> dbt indicators -> multi-agent PPO -> backtest report.

Each stage reuses what exists, so a second run is quick: ingestion resumes (a re-run inserts
nothing), dbt is incremental, and an existing trained run is backtested again rather than retrained.

Where the candles come from: real Binance when it answers; otherwise the project's local fake
exchange serving ``DEMO_DATA_DIR`` (a folder of ``<BASE>_<QUOTE>.csv[.gz]`` candles) or, when that
is unset, its seeded synthetic market. The same ccxt code path runs in every case.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import data_fetch_job
import db
import dbt_runner
import performance
import Train
from binance import make_exchange
from binance.fake_exchange import FakeExchange
from fetch_data import parse_time_ms
from settings import PROJECT_ROOT, ConfigError, check_keys, env, load_yaml

log = logging.getLogger("demo")

DEMO_KEYS = {"exchange", "ingest", "train_config", "run_id", "backtest_split", "saved_models_dir", "logs_dir"}


def load_demo_config(path: str | Path = "configs/demo.yaml") -> dict[str, Any]:
    cfg = load_yaml(path)
    check_keys(cfg, DEMO_KEYS, str(path))
    missing = sorted(DEMO_KEYS - set(cfg))
    if missing:
        raise ConfigError(f"{path} lacks {missing}; see configs/demo.yaml for every key")
    return cfg


def binance_reachable(timeout_ms: int) -> bool:
    """True when the real Binance REST API answers within ``timeout_ms``."""
    client = make_exchange(base_url="", timeout_ms=timeout_ms)
    try:
        client.fetch_time()
        return True
    except Exception as exc:  # any network or exchange error means "use the local fake"
        log.info("Binance is not reachable (%s)", type(exc).__name__)
        return False


@contextlib.contextmanager
def market_source(cfg: dict[str, Any]) -> Iterator[tuple[Any, str]]:
    """Yield a ccxt client and a sentence saying which market it talks to."""
    exchange_cfg = cfg["exchange"]
    if env("BINANCE_BASE_URL"):
        yield make_exchange(), f"the exchange at BINANCE_BASE_URL={env('BINANCE_BASE_URL')}"
        return
    if binance_reachable(int(exchange_cfg["probe_timeout_ms"])):
        yield make_exchange(base_url=""), "real Binance"
        return
    data_dir = env("DEMO_DATA_DIR")
    if data_dir and not Path(data_dir).is_dir():
        raise ConfigError(f"DEMO_DATA_DIR={data_dir} is not a folder; point it at candle CSVs or unset it")
    fake = FakeExchange(data_dir=data_dir, port=int(exchange_cfg["fake_port"]))
    what = f"candles from {data_dir}" if data_dir else "its seeded synthetic market"
    with fake:
        yield make_exchange(base_url=fake.url), f"the local fake exchange at {fake.url} serving {what}"


def ingest(cfg: dict[str, Any]) -> None:
    ingest_cfg = cfg["ingest"]
    since_ms = parse_time_ms(ingest_cfg["since"])
    until_ms = parse_time_ms(ingest_cfg["until"])
    with market_source(cfg) as (client, description):
        pairs = ", ".join(ingest_cfg["pairs"])
        print(f"[demo] ingesting {pairs} {ingest_cfg['timeframe']} from {description}")
        results = data_fetch_job.run_job(
            list(ingest_cfg["pairs"]), [ingest_cfg["timeframe"]], since_ms, until_ms, client=client
        )
    print(data_fetch_job.summary_table(results))
    failed = [f"{r.symbol} {r.timeframe}" for r in results if r.status != "ok"]
    if failed:
        raise SystemExit(f"[demo] ingestion failed for {failed}; see the table above")


def train_or_reuse(cfg: dict[str, Any]) -> Path:
    paths = Train.RunPaths.make(
        cfg["run_id"], PROJECT_ROOT / cfg["saved_models_dir"], PROJECT_ROOT / cfg["logs_dir"]
    )
    if (paths.run_dir / "checkpoint").exists():
        print(f"[demo] reusing the trained run {paths.run_dir} (delete it to retrain)")
        return paths.run_dir
    train_cfg = Train.load_config(PROJECT_ROOT / cfg["train_config"])
    print(f"[demo] training run {cfg['run_id']} ({train_cfg['run']['iterations']} iterations)")
    Train.train(train_cfg, paths)
    return paths.run_dir


def run_demo(cfg: dict[str, Any]) -> performance.BacktestResult:
    """Every stage of the demo in order; returns the backtest of the trained run."""
    url = db.database_url()
    where = "DATABASE_URL" if env("DATABASE_URL") else "the embedded PostgreSQL (DATABASE_URL unset)"
    print(f"[demo] database: {db.masked(url)} from {where}")
    db.get_engine(url)

    ingest(cfg)
    print("[demo] building indicators with dbt")
    dbt_runner.run_dbt(["build"], url=url)
    run_dir = train_or_reuse(cfg)
    print(f"[demo] backtesting {run_dir} on the {cfg['backtest_split']} split")
    out_dir = PROJECT_ROOT / cfg["logs_dir"] / cfg["run_id"] / "backtest"
    result = performance.backtest(run_dir, out_dir, split=cfg["backtest_split"])
    print(performance.format_table(result.table))
    print(f"[demo] report: {result.out_dir / 'report.html'}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--config", default="configs/demo.yaml")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for chatty in ("alembic", "pgserver", "httpx"):  # their INFO lines bury the demo's own progress
        logging.getLogger(chatty).setLevel(logging.WARNING)
    cfg = load_demo_config(args.config)
    started = time.monotonic()
    run_demo(cfg)
    print(f"[demo] done in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
