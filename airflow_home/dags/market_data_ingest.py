"""market_data_ingest: scheduled candle ingestion -> dbt indicators -> data-quality gate.

Wiring only: every task calls a project function (orchestration.py, data_quality.py). Settings come
from configs/airflow.yaml + configs/data.yaml + .env; see the README section "Airflow".

    plan -> fetch[pair x timeframe] (mapped, pool-limited, retried with exponential backoff)
         -> dbt_build (runs when at least one fetch succeeded) -> quality (fails on stale data / new gaps)

Each run covers one schedule interval and fetches up to its end: regular runs resume after the
newest stored candle, runs made by `airflow backfill create` fetch exactly their interval.
"""

from __future__ import annotations

import sys
from pathlib import Path

# The project's modules live two folders up; Airflow only puts the dags folder on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from airflow.sdk import CronDataIntervalTimetable, TriggerRule, dag, get_current_context, task  # noqa: E402

import orchestration  # noqa: E402

CONFIG = orchestration.load_config()


def _ms(moment) -> int:
    return int(moment.timestamp() * 1000)


@dag(
    dag_id="market_data_ingest",
    description="Fetch candles for every configured pair x timeframe, build indicators, check quality",
    schedule=CronDataIntervalTimetable(CONFIG.schedule, timezone="UTC"),
    start_date=CONFIG.start_date,
    catchup=False,
    max_active_runs=1,
    tags=["market-data"],
    doc_md=__doc__,
)
def market_data_ingest():
    @task
    def plan(data_interval_start=None, data_interval_end=None, dag_run=None) -> list[dict]:
        return orchestration.plan_ingest(
            orchestration.load_config(), _ms(data_interval_start), _ms(data_interval_end),
            fill_interval=orchestration.is_backfill_run(getattr(dag_run, "run_type", None)),
        )

    @task(**orchestration.fetch_task_args(CONFIG.fetch))
    def fetch(target: dict) -> dict:
        get_current_context()["target_label"] = orchestration.target_label(target)
        return orchestration.run_fetch(target)

    @task(trigger_rule=TriggerRule.ALL_DONE_MIN_ONE_SUCCESS, pool=CONFIG.dbt_pool)
    def dbt_build() -> None:
        orchestration.run_dbt_build(orchestration.load_config())

    @task
    def quality(data_interval_end=None) -> dict:
        import data_quality

        return data_quality.run_quality_check(orchestration.load_config(), _ms(data_interval_end))

    fetch.expand(target=plan()) >> dbt_build() >> quality()


market_data_ingest()
