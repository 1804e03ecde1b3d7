"""What the Airflow DAGs run: settings, fetch planning, one fetch, the dbt build.

The DAG files in ``airflow_home/dags/`` only wire these functions into tasks, so everything here is
plain Python that works (and is tested) without a scheduler. Settings come from
``configs/airflow.yaml`` (overridable by the YAML file named in ``AIRFLOW_PIPELINE_CONFIG``) and,
for pairs/timeframes/start, from ``configs/data.yaml``; the exchange URL and keys from ``.env``.

A fetch target is a small JSON-able dict (it travels through XCom between mapped tasks)::

    {"symbol": "BTC/USDT", "timeframe": "1h", "since_ms": None | int, "until_ms": int}

``since_ms=None`` means "resume after the newest stored candle" (``fetch_data``'s rule).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, is_dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from settings import (  # noqa: F401  (parse_time_ms and format_ms re-exported for the DAGs)
    CONFIG_DIR,
    ConfigError,
    check_keys,
    data_config,
    env,
    format_ms,
    load_yaml,
    merge,
    parse_time_ms,
)

log = logging.getLogger(__name__)

CONFIG_PATH = CONFIG_DIR / "airflow.yaml"
OVERRIDE_ENV = "AIRFLOW_PIPELINE_CONFIG"
DAY_MS = 86_400_000

# The accepted shape of configs/airflow.yaml; a key outside it is a typo and an error.
_SCHEMA: dict[str, Any] = {
    "pairs": None,
    "timeframes": None,
    "since": None,
    "ingest": {"schedule", "start_date"},
    "fetch": {"pool", "pool_slots", "retries", "retry_delay_s", "retry_backoff", "max_retry_delay_s",
              "timeout_s", "request_retries"},
    "backfill": {"chunk_days"},
    "quality": {"max_lag_bars", "gap_lookback_bars"},
    "dbt": {"build_args", "pool", "pool_slots"},
    "runner": {"host", "port", "metadata_database", "stop_timeout_s", "worker_log_server_port",
               "trigger_log_server_port"},
}


class FetchError(RuntimeError):
    """A fetch failed in a way that may pass (rate limit, outage, timeout): Airflow retries it."""


class PermanentFetchError(FetchError):
    """A fetch failed in a way a retry cannot fix (unknown symbol, bad timeframe): fail at once."""


@dataclass(frozen=True)
class FetchPolicy:
    """How fetch tasks are throttled and retried."""

    pool: str
    pool_slots: int
    retries: int
    retry_delay_s: float
    retry_backoff: float
    max_retry_delay_s: float
    timeout_s: float
    request_retries: int | None  # per-request retries inside one attempt; None = configs/data.yaml's


@dataclass(frozen=True)
class PipelineConfig:
    """Everything the DAGs and the runner need, resolved and validated."""

    exchange: str
    pairs: tuple[str, ...]
    timeframes: tuple[str, ...]
    since: str | None
    schedule: str
    start_date: datetime
    fetch: FetchPolicy
    backfill_chunk_days: int
    max_lag_bars: int
    gap_lookback_bars: int
    dbt_build_args: tuple[str, ...]
    dbt_pool: str
    dbt_pool_slots: int
    runner: dict[str, Any]


def _check_schema(raw: dict[str, Any], where: str) -> None:
    check_keys(raw, _SCHEMA, where)
    for section, keys in _SCHEMA.items():
        if isinstance(keys, set) and section in raw:
            if not isinstance(raw[section], dict):
                raise ConfigError(f"{where}.{section} must be a mapping with keys {sorted(keys)}")
            check_keys(raw[section], keys, f"{where}.{section}")


def load_config(path: str | Path | None = None) -> PipelineConfig:
    """Load ``configs/airflow.yaml`` merged with the ``AIRFLOW_PIPELINE_CONFIG`` file, if any."""
    raw = load_yaml(path or CONFIG_PATH)
    _check_schema(raw, str(path or CONFIG_PATH))
    override_path = env(OVERRIDE_ENV)
    if override_path:
        override = load_yaml(override_path)
        _check_schema(override, override_path)
        raw = merge(raw, override, override_path)
    data = data_config()

    pairs = raw["pairs"] or data.get("pairs") or []
    timeframes = raw["timeframes"] or data.get("timeframes") or []
    if not pairs or not timeframes:
        raise ConfigError("no pairs or timeframes configured (configs/data.yaml or configs/airflow.yaml)")
    fetch = raw["fetch"]
    policy = FetchPolicy(
        pool=str(fetch["pool"]),
        pool_slots=int(fetch["pool_slots"]),
        retries=int(fetch["retries"]),
        retry_delay_s=float(fetch["retry_delay_s"]),
        retry_backoff=float(fetch["retry_backoff"]),
        max_retry_delay_s=float(fetch["max_retry_delay_s"]),
        timeout_s=float(fetch["timeout_s"]),
        request_retries=None if fetch.get("request_retries") is None else int(fetch["request_retries"]),
    )
    if policy.pool_slots < 1 or policy.retries < 0 or policy.retry_backoff < 1:
        raise ConfigError("fetch: pool_slots must be >= 1, retries >= 0 and retry_backoff >= 1")
    chunk_days = int(raw["backfill"]["chunk_days"])
    if chunk_days < 1:
        raise ConfigError("backfill.chunk_days must be >= 1")
    return PipelineConfig(
        exchange=str(data.get("exchange", "binance")),
        pairs=tuple(pairs),
        timeframes=tuple(timeframes),
        since=raw["since"] or data.get("since"),
        schedule=str(raw["ingest"]["schedule"]),
        start_date=datetime.fromtimestamp(parse_time_ms(raw["ingest"]["start_date"]) / 1000, UTC),
        fetch=policy,
        backfill_chunk_days=chunk_days,
        max_lag_bars=int(raw["quality"]["max_lag_bars"]),
        gap_lookback_bars=int(raw["quality"]["gap_lookback_bars"]),
        dbt_build_args=tuple(raw["dbt"]["build_args"]),
        dbt_pool=str(raw["dbt"]["pool"]),
        dbt_pool_slots=int(raw["dbt"]["pool_slots"]),
        runner=dict(raw["runner"]),
    )




def plan_ingest(
    config: PipelineConfig, interval_start_ms: int, interval_end_ms: int, fill_interval: bool = False
) -> list[dict[str, Any]]:
    """One target per pair x timeframe for an ingest run covering up to ``interval_end_ms``.

    Regular runs resume after the newest stored candle (``since_ms=None``), so a run that was missed
    is caught up by the next one. Backfill runs (``fill_interval``) fetch exactly their interval,
    so Airflow's own ``backfill create`` fills holes in the past.
    """
    since_ms = interval_start_ms if fill_interval else None
    return [
        {"symbol": symbol, "timeframe": timeframe, "since_ms": since_ms, "until_ms": interval_end_ms}
        for symbol in config.pairs
        for timeframe in config.timeframes
    ]


def is_backfill_run(run_type: Any) -> bool:
    """True for runs created by `airflow backfill create` (run type ``backfill``)."""
    return str(getattr(run_type, "value", run_type or "")).lower() == "backfill"


def plan_backfill(
    start: str | int | datetime,
    end: str | int | datetime,
    pairs: list[str] | tuple[str, ...],
    timeframes: list[str] | tuple[str, ...],
    chunk_days: int,
) -> list[dict[str, Any]]:
    """Split [start, end) into chunks of ``chunk_days`` (aligned to whole days) per pair x timeframe.

    Chunks are half-open and abut exactly, so together they cover the range once; each becomes its
    own mapped task, so a failed chunk retries alone.
    """
    start_ms, end_ms = parse_time_ms(start), parse_time_ms(end)
    if end_ms <= start_ms:
        raise ConfigError(f"backfill end {format_ms(end_ms)} is not after start {format_ms(start_ms)}")
    if chunk_days < 1:
        raise ConfigError("chunk_days must be >= 1")
    step_ms = chunk_days * DAY_MS
    count = math.ceil((end_ms - start_ms) / step_ms)
    bounds = [(start_ms + i * step_ms, min(start_ms + (i + 1) * step_ms, end_ms)) for i in range(count)]
    return [
        {"symbol": symbol, "timeframe": timeframe, "since_ms": lo, "until_ms": hi}
        for symbol in pairs
        for timeframe in timeframes
        for lo, hi in bounds
    ]


def target_label(target: dict[str, Any]) -> str:
    """``BTC/USDT 1h 2021-01-01 00:00..2021-01-31 00:00``: a mapped task's name in the UI and logs."""
    span = f"{format_ms(target.get('since_ms')) if target.get('since_ms') is not None else 'resume'}"
    return f"{target['symbol']} {target['timeframe']} {span}..{format_ms(target.get('until_ms'))}"


def _as_dict(result: Any) -> dict[str, Any]:
    if is_dataclass(result) and not isinstance(result, type):
        return asdict(result)
    if isinstance(result, dict):
        return dict(result)
    return dict(vars(result))


def _jsonable(record: dict[str, Any]) -> dict[str, Any]:
    """Keep only XCom-friendly values (numbers, strings, None, lists of those)."""
    clean: dict[str, Any] = {}
    for key, value in record.items():
        if value is None or isinstance(value, bool | int | float | str):
            clean[key] = value
        elif isinstance(value, list | tuple):
            clean[key] = [v if v is None or isinstance(v, int | float | str) else str(v) for v in value]
        else:
            clean[key] = str(value)
    return clean


def run_fetch(target: dict[str, Any], config: PipelineConfig | None = None) -> dict[str, Any]:
    """Fetch one target through ``data_fetch_job.run_job`` and return its result as a dict.

    Raises :class:`PermanentFetchError` when retrying cannot help, :class:`FetchError` otherwise,
    so the Airflow task fails (and retries) for this target only.
    """
    import dataclasses

    import data_fetch_job  # imported lazily: DAG parsing must stay light
    import db
    from fetch_data import ExchangeOutage

    config = config or load_config()
    policy = None
    if config.fetch.request_retries is not None:
        policy = dataclasses.replace(
            data_fetch_job._policy(data_fetch_job.load_config()["fetch"]),
            max_retries=config.fetch.request_retries,
        )
    log.info("fetching %s", target_label(target))
    try:
        results = data_fetch_job.run_job(
            [target["symbol"]], [target["timeframe"]], since_ms=target.get("since_ms"),
            until_ms=target.get("until_ms"), exchange=config.exchange,
            default_since_ms=parse_time_ms(config.since) if config.since else None,
            policy=policy, show_progress=False,
        )
    except (ExchangeOutage, db.DatabaseUnavailable) as exc:
        # the exchange or the database is down: Airflow retries the task later with backoff
        raise FetchError(f"{target_label(target)}: {exc}") from exc
    if len(results) != 1:
        raise FetchError(f"expected one result for {target_label(target)}, got {len(results)}")
    record = _jsonable(_as_dict(results[0]))
    if not _succeeded(record):
        message = f"fetch failed for {target_label(target)}: {record.get('error') or record}"
        if _is_permanent(record):
            raise PermanentFetchError(message)
        raise FetchError(message)
    log.info("fetched %s: %s", target_label(target), record)
    return record


def _succeeded(record: dict[str, Any]) -> bool:
    status = str(record.get("status", "")).lower()
    return status in {"ok", "success", "succeeded", "done"} and not record.get("error")


def _is_permanent(record: dict[str, Any]) -> bool:
    if "permanent" in record:
        return bool(record["permanent"])
    return str(record.get("status", "")).lower() in {"permanent", "rejected", "invalid"}


def run_dbt_build(config: PipelineConfig) -> None:
    """Build the dbt project (indicators) with the configured arguments; raises DbtError on failure."""
    import dbt_runner

    log.info("dbt %s", " ".join(config.dbt_build_args))
    dbt_runner.run_dbt(list(config.dbt_build_args))


def summarize_chunks(chunks: list[dict[str, Any]], results: list[dict[str, Any]]) -> dict[str, Any]:
    """Total a backfill's chunk results; raise :class:`FetchError` naming chunks without a result."""
    done = {(r.get("symbol"), r.get("timeframe"), r.get("since_ms"), r.get("until_ms")) for r in results}
    missing = [c for c in chunks if (c["symbol"], c["timeframe"], c["since_ms"], c["until_ms"]) not in done]
    summary = {
        "chunks": len(chunks),
        "succeeded": len(chunks) - len(missing),
        "rows_inserted": sum(int(r.get("rows_inserted") or 0) for r in results),
    }
    log.info("backfill summary: %s", summary)
    if missing:
        raise FetchError(
            f"{len(missing)} of {len(chunks)} backfill chunk(s) failed: "
            + "; ".join(target_label(c) for c in missing)
            + " (clear those mapped tasks to retry them alone)"
        )
    return summary


def fetch_task_args(policy: FetchPolicy) -> dict[str, Any]:
    """Airflow task arguments shared by every fetch task (ingest targets and backfill chunks).

    Airflow-level retries with exponential backoff come on top of fetch_data's per-request retries;
    a :class:`PermanentFetchError` fails the task at once instead of burning its retries. The pool
    bounds how many fetches talk to the exchange at the same time across all DAGs.
    """
    from datetime import timedelta

    from airflow.sdk import ExceptionRetryPolicy, RetryAction, RetryRule

    return {
        "pool": policy.pool,
        "retries": policy.retries,
        "retry_delay": timedelta(seconds=policy.retry_delay_s),
        "retry_exponential_backoff": policy.retry_backoff,
        "max_retry_delay": timedelta(seconds=policy.max_retry_delay_s),
        "execution_timeout": timedelta(seconds=policy.timeout_s),
        "retry_policy": ExceptionRetryPolicy(
            rules=[RetryRule(exception=f"{__name__}.PermanentFetchError", action=RetryAction.FAIL,
                             reason="permanent exchange error: a retry cannot help")]
        ),
        # The UI names each mapped task after its target; the task sets `target_label`.
        "map_index_template": "{{ target_label }}",
    }
