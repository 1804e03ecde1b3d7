"""Data-quality checks on stored candles and indicators, run after every ingest.

Rules (thresholds in ``configs/airflow.yaml``, section ``quality``):

- stale: the newest stored candle of a pair/timeframe lags the last bar closed by ``end_ms`` (the
  run's interval end, not the wall clock, so re-runs of old intervals judge the same way) by more
  than ``max_lag_bars`` bars, or nothing is stored at all.
- new gap: missing candles between two stored ones inside the last ``gap_lookback_bars`` bars
  before ``end_ms`` (``db.gap_report``). Older gaps (such as Binance's own outages, which the fetch
  job reports and never fills) do not fail every later run; a hole longer than the window shows up
  as staleness while it lasts.
- features lag: ``features.indicators`` (dbt) does not reach the newest stored candle.

Every rule looks at the run's own interval, i.e. at candles and indicators opening before
``end_ms``: a backfill of an old interval is not failed by newer candles that a concurrent
scheduled run stored after the backfill's dbt build.

``python data_quality.py`` runs the checks for the configured pairs against now and prints a table.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Engine

log = logging.getLogger(__name__)


class DataQualityError(RuntimeError):
    """Stored market data failed a quality rule; the message lists every problem."""


@dataclass(frozen=True)
class QualityIssue:
    symbol: str
    timeframe: str
    kind: str  # "stale" | "gap" | "features_lag"
    detail: str


@dataclass
class QualityReport:
    end_ms: int
    checked: list[tuple[str, str]] = field(default_factory=list)
    newest_ms: dict[str, int | None] = field(default_factory=dict)
    issues: list[QualityIssue] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.issues

    def summary(self) -> str:
        from settings import format_ms

        lines = [f"data quality at {format_ms(self.end_ms)}: {len(self.checked)} series checked, "
                 f"{len(self.issues)} issue(s)"]
        lines += [f"  {i.kind:<12} {i.symbol} {i.timeframe}: {i.detail}" for i in self.issues]
        return "\n".join(lines)


_FEATURES_SQL = text(
    "SELECT max(open_time_ms) FROM features.indicators "
    "WHERE exchange = :exchange AND symbol = :symbol AND timeframe = :timeframe AND open_time_ms < :end_ms"
)
_CANDLES_SQL = text(
    "SELECT max(open_time_ms) FROM market.ohlcv "
    "WHERE exchange = :exchange AND symbol = :symbol AND timeframe = :timeframe AND open_time_ms < :end_ms"
)


def check_market_data(
    engine: Engine,
    exchange: str,
    series: list[tuple[str, str]],
    end_ms: int,
    max_lag_bars: int = 1,
    gap_lookback_bars: int = 48,
    check_features: bool = True,
) -> QualityReport:
    """Check every (symbol, timeframe) in ``series`` as of ``end_ms``; never raises on findings."""
    import db
    from binance import timeframe_ms
    from settings import format_ms

    report = QualityReport(end_ms=end_ms)
    with engine.connect() as conn:
        features_exist = check_features and conn.execute(
            text("SELECT to_regclass('features.indicators') IS NOT NULL")
        ).scalar()
        for symbol, timeframe in series:
            bar_ms = timeframe_ms(timeframe)
            key = {"exchange": exchange, "symbol": symbol, "timeframe": timeframe, "end_ms": end_ms}
            report.checked.append((symbol, timeframe))
            newest = conn.execute(_CANDLES_SQL, key).scalar()  # within the run's interval, not after it
            report.newest_ms[f"{symbol} {timeframe}"] = newest
            last_closed_ms = (end_ms // bar_ms) * bar_ms - bar_ms
            if newest is None:
                report.issues.append(QualityIssue(symbol, timeframe, "stale", "no candles stored"))
                continue
            lag_bars = (last_closed_ms - newest) // bar_ms
            if lag_bars > max_lag_bars:
                report.issues.append(QualityIssue(
                    symbol, timeframe, "stale",
                    f"newest candle {format_ms(newest)} is {lag_bars} bars behind the last closed bar "
                    f"{format_ms(last_closed_ms)} (allowed {max_lag_bars})",
                ))
            lo = end_ms - gap_lookback_bars * bar_ms
            for gap in db.gap_report(engine, exchange, symbol, timeframe, lo, end_ms):
                report.issues.append(QualityIssue(
                    symbol, timeframe, "gap",
                    f"{gap.missing_bars} missing bar(s) from {format_ms(gap.start_ms)} "
                    f"to {format_ms(gap.end_ms)}",
                ))
            if check_features:
                newest_feature = conn.execute(_FEATURES_SQL, key).scalar() if features_exist else None
                if newest_feature is None or newest_feature < newest:
                    report.issues.append(QualityIssue(
                        symbol, timeframe, "features_lag",
                        f"features.indicators reaches {format_ms(newest_feature)}, candles reach "
                        f"{format_ms(newest)}",
                    ))
    return report


def assert_quality(report: QualityReport) -> QualityReport:
    """Log the report; raise :class:`DataQualityError` (loudly, listing every issue) if any."""
    if not report.ok:
        log.error("%s", report.summary())
        raise DataQualityError(report.summary())
    log.info("%s", report.summary())
    return report


def run_quality_check(config: Any, end_ms: int) -> dict[str, Any]:
    """Run `check_market_data` over every configured series as of ``end_ms``; raise if any issue.
    ``config``: an `orchestration.PipelineConfig` (the ingest DAG's quality task).

    Every configured pair is checked, including one whose fetch failed in this run: if its data is
    now stale the gate fails loudly and names it.
    """
    import db

    report = check_market_data(
        db.get_engine(), config.exchange, [(p, t) for p in config.pairs for t in config.timeframes],
        end_ms, max_lag_bars=config.max_lag_bars, gap_lookback_bars=config.gap_lookback_bars,
    )
    assert_quality(report)
    return {"end_ms": end_ms, "checked": len(report.checked), "newest_ms": report.newest_ms}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--end", help="reference time (ISO, UTC; default now)")
    parser.add_argument("--no-features", action="store_true", help="skip the features.indicators check")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    import db
    from orchestration import load_config
    from settings import parse_time_ms

    config = load_config()
    end_ms = parse_time_ms(args.end) if args.end else int(time.time() * 1000)
    report = check_market_data(
        db.get_engine(), config.exchange, [(p, t) for p in config.pairs for t in config.timeframes],
        end_ms, config.max_lag_bars, config.gap_lookback_bars, check_features=not args.no_features,
    )
    print(report.summary())
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
