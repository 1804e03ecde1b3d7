"""paper_trading: one paper-trading decision after each hourly candle ingest (paused when created).

Wiring only: `wait_for_ingest` waits for the `market_data_ingest` run of the same interval to finish
(success or failure: the cycle checks its own data and waits when the closed bar is missing), then
`trade` runs `trade.py --once` in paper mode for the run named by `scheduled_run` in
configs/trade.yaml (`trader.run_once`). Unpause it in the UI once `scheduled_run` is set. See the
README section "Paper and live trading".
"""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path

# The project's modules live two folders up; Airflow only puts the dags folder on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from airflow.providers.standard.sensors.external_task import ExternalTaskSensor  # noqa: E402
from airflow.sdk import CronDataIntervalTimetable, dag, task  # noqa: E402

import orchestration  # noqa: E402

CONFIG = orchestration.load_config()


@dag(
    dag_id="paper_trading",
    description="Paper-trade the configured run once per closed bar, after the hourly ingest",
    schedule=CronDataIntervalTimetable(CONFIG.schedule, timezone="UTC"),  # the ingest DAG's schedule
    start_date=CONFIG.start_date,
    catchup=False,
    max_active_runs=1,
    is_paused_upon_creation=True,  # trading starts only when someone unpauses it
    tags=["trading"],
    doc_md=__doc__,
)
def paper_trading():
    wait_for_ingest = ExternalTaskSensor(
        task_id="wait_for_ingest",
        external_dag_id="market_data_ingest",
        external_task_id=None,  # the whole run
        allowed_states=["success", "failed"],
        mode="reschedule",
        poke_interval=30,
        timeout=int(timedelta(minutes=50).total_seconds()),
    )

    @task
    def trade() -> dict:
        import trader

        return trader.run_once()

    wait_for_ingest >> trade()


paper_trading()
