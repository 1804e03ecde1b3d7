"""`make demo`: candles -> PostgreSQL -> dbt indicators -> multi-agent PPO -> backtest report.

Each stage reuses what exists, so a second run is quick: ingestion resumes (a re-run inserts
nothing), dbt is incremental, and an existing trained run is backtested again rather than retrained.

Where the candles come from (``exchange.source`` in configs/demo.yaml, or ``--source``): ``auto``
tries real Binance and falls back to the project's local fake exchange when Binance does not answer
within ``probe_timeout_ms``; ``binance`` insists on Binance; ``fake`` always uses the fake exchange,
serving ``DEMO_DATA_DIR`` (a folder of ``<BASE>_<QUOTE>.csv[.gz]`` candles) or, when that is unset,
its seeded synthetic market. The same ccxt code path runs in every case. The candles are stored
under an ``exchange`` label that names their origin (`market_data.fake_exchange_label`), so every
output (console, run manifest, metrics.json, report title) says which data it used
(`market_data.describe_source`) and synthetic rows never mix with real ones.

Database: ``DATABASE_URL`` when set, else the database ``database`` (configs/demo.yaml) on the
embedded PostgreSQL, which the demo stops at its end when it started it. ``python demo.py --clean``
(``make clean-demo``) deletes the demo's run, logs and embedded database. Library output (Ray,
RLlib, dbt) goes to ``logs/<run_id>/libraries.log`` and ``logs/dbt/dbt.log``, not the console.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, make_url, text

import airflow_runner
import console
import data_fetch_job
import db
import dbt_runner
import market_data
import performance
import Train
from binance import make_exchange
from binance.fake_exchange import FakeExchange
from fetch_data import parse_time_ms
from settings import PROJECT_ROOT, ConfigError, check_keys, env, load_yaml

log = logging.getLogger("demo")

DEMO_KEYS = {
    "exchange", "ingest", "train_config", "run_id", "backtest_split", "saved_models_dir", "logs_dir",
    "database",
}  # fmt: skip
EXCHANGE_KEYS = {"source", "probe_timeout_ms", "fake_port"}
SOURCES = ("auto", "binance", "fake")


def load_demo_config(path: str | Path = "configs/demo.yaml") -> dict[str, Any]:
    cfg = load_yaml(path)
    check_keys(cfg, DEMO_KEYS, str(path))
    missing = sorted(DEMO_KEYS - set(cfg))
    if missing:
        raise ConfigError(f"{path} lacks {missing}; see configs/demo.yaml for every key")
    check_keys(cfg["exchange"], EXCHANGE_KEYS, f"{path} exchange")
    missing = sorted(EXCHANGE_KEYS - set(cfg["exchange"]))
    if missing:
        raise ConfigError(f"{path} exchange lacks {missing}; see configs/demo.yaml for every key")
    if cfg["exchange"]["source"] not in SOURCES:
        raise ConfigError(f"{path} exchange.source is {cfg['exchange']['source']!r}; use one of {SOURCES}")
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


@dataclass(frozen=True)
class MarketSource:
    """Where the demo's candles come from."""

    client: Any  # ccxt client
    exchange_label: str  # market.ohlcv's ``exchange`` for these candles
    data_source: str  # for people: `market_data.describe_source` of the stored candles
    how: str  # how it is reached, for the console


@contextlib.contextmanager
def market_source(cfg: dict[str, Any], choice: str) -> Iterator[MarketSource]:
    """The market ``choice`` (one of `SOURCES`) asks for, open while the context lasts."""
    exchange_cfg = cfg["exchange"]
    base_url = env("BINANCE_BASE_URL")
    if choice != "fake" and base_url:
        label = market_data.BINANCE_EXCHANGE_LABEL
        yield MarketSource(make_exchange(), label, "Binance", f"the exchange at BINANCE_BASE_URL={base_url}")
        return
    if choice != "fake":
        timeout_ms = int(exchange_cfg["probe_timeout_ms"])
        if binance_reachable(timeout_ms):
            label = market_data.BINANCE_EXCHANGE_LABEL
            yield MarketSource(make_exchange(base_url=""), label, "Binance", "the real Binance API")
            return
        if choice == "binance":
            raise SystemExit(f"[demo] Binance did not answer within {timeout_ms} ms; check the network, "
                             "or run the demo on the local fake exchange: python demo.py --source fake")
    data_dir = env("DEMO_DATA_DIR")
    if data_dir and not Path(data_dir).is_dir():
        raise ConfigError(f"DEMO_DATA_DIR={data_dir} is not a folder; point it at candle CSVs or unset it")
    fake = FakeExchange(data_dir=data_dir or None, port=int(exchange_cfg["fake_port"]))
    seed = getattr(fake.source, "seed", 0)
    label = market_data.fake_exchange_label(data_dir or None, seed)
    why = "--source fake" if choice == "fake" else "Binance did not answer"
    with fake:
        yield MarketSource(make_exchange(base_url=fake.url), label,
                           market_data.describe_source({"kind": "db", "exchange": label}),
                           f"the local fake exchange at {fake.url} ({why})")


def demo_database(cfg: dict[str, Any]) -> tuple[str, str]:
    """(URL, sentence for people) of the database the demo uses; creates the embedded one."""
    if env("DATABASE_URL"):
        return db.database_url(), "DATABASE_URL"
    server = db.embedded_url()
    airflow_runner.ensure_database(server, cfg["database"])
    url = make_url(server).set(database=cfg["database"]).render_as_string(hide_password=False)
    return url, f"database {cfg['database']} of the embedded PostgreSQL in {db.embedded_data_dir()}"


def ingest(cfg: dict[str, Any], source: MarketSource) -> None:
    ingest_cfg = cfg["ingest"]
    since_ms = parse_time_ms(ingest_cfg["since"])
    until_ms = parse_time_ms(ingest_cfg["until"])
    pairs = ", ".join(ingest_cfg["pairs"])
    print(f"[demo] ingesting {pairs} {ingest_cfg['timeframe']} from {source.how}")
    results = data_fetch_job.run_job(
        list(ingest_cfg["pairs"]), [ingest_cfg["timeframe"]], since_ms, until_ms,
        client=source.client, exchange=source.exchange_label,
    )
    print(data_fetch_job.summary_table(results))
    failed = [f"{r.symbol} {r.timeframe}" for r in results if r.status != "ok"]
    if failed:
        raise SystemExit(f"[demo] ingestion failed for {failed}; see the table above")


def train_or_reuse(cfg: dict[str, Any], source: MarketSource) -> Path:
    """Train the demo's run on the stored candles of ``source``, or reuse it if trained on them."""
    paths = Train.RunPaths.make(
        cfg["run_id"], PROJECT_ROOT / cfg["saved_models_dir"], PROJECT_ROOT / cfg["logs_dir"]
    )
    train_cfg = Train.load_config(PROJECT_ROOT / cfg["train_config"])
    train_cfg["data"]["source"]["exchange"] = source.exchange_label  # this origin's rows only
    if (paths.run_dir / "checkpoint").exists():
        manifest = json.loads((paths.run_dir / "manifest.json").read_text())
        trained_on = manifest.get("data_source") or market_data.describe_source(manifest["source"])
        if trained_on != source.data_source:
            raise SystemExit(
                f"[demo] {paths.run_dir} was trained on {trained_on}, not on {source.data_source}; "
                "run `make clean-demo` (or delete that folder) to train on this data"
            )
        print(f"[demo] reusing the trained run {paths.run_dir} (delete it to retrain)")
        return paths.run_dir
    print(f"[demo] training run {cfg['run_id']} ({train_cfg['run']['iterations']} iterations); "
          f"Ray and RLlib messages go to {console.routed_log() or 'the run logs'}")
    Train.train(train_cfg, paths)
    return paths.run_dir


def run_demo(cfg: dict[str, Any], choice: str) -> performance.BacktestResult:
    """Every stage of the demo in order; returns the backtest of the trained run."""
    with market_source(cfg, choice) as source:
        print(f"[demo] data: {source.data_source}, from {source.how}")
        if source.exchange_label.startswith(market_data.SYNTHETIC_EXCHANGE_PREFIX):
            print("[demo] these are synthetic prices, not market data: set DEMO_DATA_DIR to replay real "
                  "candles, or see 'Real candles' in README.md")
        url, where = demo_database(cfg)
        os.environ["DATABASE_URL"] = url  # Train, the backtest and Ray's workers read this database
        print(f"[demo] database: {db.masked(url)} ({where})")
        db.get_engine(url)
        ingest(cfg, source)
    dbt_result = dbt_runner.run_dbt(["build"], url=url, quiet=True)
    print(f"[demo] indicators built with dbt: {len(getattr(dbt_result, 'results', []))} models and data "
          f"tests passed (log: {dbt_runner.DBT_LOG_DIR / 'dbt.log'})")
    run_dir = train_or_reuse(cfg, source)
    print(f"[demo] backtesting {run_dir} on the {cfg['backtest_split']} split")
    out_dir = PROJECT_ROOT / cfg["logs_dir"] / cfg["run_id"] / "backtest"
    result = performance.backtest(run_dir, out_dir, split=cfg["backtest_split"])
    print(performance.format_table(result.table, title=f"Backtest on {result.data_source}, {result.label}:"))
    print(f"[demo] report: {result.out_dir / 'report.html'}")
    return result


def clean(cfg: dict[str, Any]) -> None:
    """Delete the demo's trained run, its logs and (on the embedded PostgreSQL) its database."""
    run_id = cfg["run_id"]
    for folder in (PROJECT_ROOT / cfg["saved_models_dir"] / run_id, PROJECT_ROOT / cfg["logs_dir"] / run_id):
        if folder.exists():
            shutil.rmtree(folder)
            print(f"[demo] removed {folder}")
    name = cfg["database"]
    if env("DATABASE_URL"):
        print("[demo] DATABASE_URL is set: the demo used that database, which is left as it is")
        return
    if (db.embedded_data_dir() / "PG_VERSION").exists():
        with db.embedded_session():
            admin = create_engine(db.embedded_url(), isolation_level="AUTOCOMMIT")
            try:
                with admin.connect() as conn:
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            finally:
                admin.dispose()
        print(f"[demo] dropped the database {name} of the embedded PostgreSQL")
    targets = dbt_runner.DBT_PROJECT_DIR / "target"
    for artifact in (targets / name, targets / f"{name}.lock"):  # dbt's per-database artifacts
        if artifact.is_dir():
            shutil.rmtree(artifact)
        elif artifact.exists():
            artifact.unlink()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--source", choices=SOURCES, default=None,
                        help="where the candles come from (default: exchange.source of the config)")
    parser.add_argument("--clean", action="store_true",
                        help="delete the demo's trained run, logs and database, then exit")
    args = parser.parse_args(argv)
    cfg = load_demo_config(args.config)
    if args.clean:
        clean(cfg)
        return 0
    # Console: errors only. The ingest table already counts gaps and retries, which the per-candle
    # warnings would repeat; those, and every INFO line, are in the log file.
    log_file = console.setup_entry_point(PROJECT_ROOT / cfg["logs_dir"] / cfg["run_id"] / "demo.log",
                                         console_level=logging.ERROR)
    print(f"[demo] details and library messages: {log_file}")
    started = time.monotonic()
    stops_db = not env("DATABASE_URL") and not db.embedded_running()
    previous_url = os.environ.get("DATABASE_URL")
    try:
        with db.embedded_session():
            run_demo(cfg, args.source or cfg["exchange"]["source"])
    finally:
        if previous_url is None:
            os.environ.pop("DATABASE_URL", None)
        else:
            os.environ["DATABASE_URL"] = previous_url
    if stops_db:
        print("[demo] stopped the embedded PostgreSQL it started (`make db-stop` stops one left by other "
              "commands)")
    print(f"[demo] done in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
