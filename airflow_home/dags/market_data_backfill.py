"""market_data_backfill: fetch a date range in chunks, then rebuild indicators.

Wiring only: every task calls a project function (orchestration.py). Trigger it with params, e.g.
`airflow dags trigger market_data_backfill -c '{"start": "2021-01-01", "end": "2021-06-01"}'`.

    plan_chunks -> fetch_chunk[pair x timeframe x chunk] (mapped; a failed chunk retries alone)
                -> dbt_build (runs when at least one chunk succeeded)
                -> summarize (fails the run, naming them, if any chunk failed)

Empty `pairs` / `timeframes` mean the configured ones; `chunk_days` 0 means configs/airflow.yaml's.
"""

from __future__ import annotations

import sys
from pathlib import Path

# The project's modules live two folders up; Airflow only puts the dags folder on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from airflow.sdk import Param, TriggerRule, dag, get_current_context, task  # noqa: E402

import orchestration  # noqa: E402

CONFIG = orchestration.load_config()
DEFAULT_START = str(CONFIG.since or "2021-01-01")[:10]
DEFAULT_END = orchestration.format_ms(
    orchestration.parse_time_ms(DEFAULT_START) + CONFIG.backfill_chunk_days * orchestration.DAY_MS
)[:10]


@dag(
    dag_id="market_data_backfill",
    description="Backfill candles over a date range in independently retried chunks, then build dbt",
    schedule=None,
    start_date=CONFIG.start_date,
    catchup=False,
    max_active_runs=1,
    tags=["market-data"],
    doc_md=__doc__,
    params={
        "start": Param(DEFAULT_START, type="string", format="date", description="first day (UTC)"),
        "end": Param(DEFAULT_END, type="string", format="date", description="end day (UTC, exclusive)"),
        "pairs": Param([], type="array", items={"type": "string"}, description="empty = configured"),
        "timeframes": Param([], type="array", items={"type": "string"}, description="empty = configured"),
        "chunk_days": Param(0, type="integer", minimum=0, description="0 = configured chunk length"),
    },
)
def market_data_backfill():
    @task
    def plan_chunks(params=None) -> list[dict]:
        config = orchestration.load_config()
        return orchestration.plan_backfill(
            params["start"], params["end"], params["pairs"] or config.pairs,
            params["timeframes"] or config.timeframes, params["chunk_days"] or config.backfill_chunk_days,
        )

    @task(**orchestration.fetch_task_args(CONFIG.fetch))
    def fetch_chunk(target: dict) -> dict:
        get_current_context()["target_label"] = orchestration.target_label(target)
        return orchestration.run_fetch(target)

    @task(trigger_rule=TriggerRule.ALL_DONE_MIN_ONE_SUCCESS, pool=CONFIG.dbt_pool)
    def dbt_build() -> None:
        orchestration.run_dbt_build(orchestration.load_config())

    @task(trigger_rule=TriggerRule.ALL_DONE)
    def summarize(chunks: list[dict], results: list[dict]) -> dict:
        return orchestration.summarize_chunks(list(chunks), list(results))

    chunks = plan_chunks()
    results = fetch_chunk.expand(target=chunks)
    results >> dbt_build()
    summarize(chunks, results)


market_data_backfill()
