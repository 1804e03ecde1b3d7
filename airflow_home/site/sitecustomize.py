"""Loaded at start-up by every Airflow process that ``airflow_runner`` starts (it puts this folder
first on PYTHONPATH): binds Airflow's log servers to ``AIRFLOW_RUNNER_LOG_SERVER_HOST``.

Airflow 3.x's ``airflow.utils.serve_logs.core.serve_logs`` (the worker log server on
``[logging] worker_log_server_port``, 8793, and the triggerer's on ``trigger_log_server_port``,
8794) hands ``host=""`` (every interface) to uvicorn, and no setting changes that. On one machine the
API server reads task logs from local files, so nothing needs them reachable from elsewhere. Nothing
is imported until Airflow imports that module: other processes pay one finder lookup per import.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys

_TARGET = "airflow.utils.serve_logs.core"


class _LocalLogServer(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):  # noqa: ANN001 - the import system's signature
        if name != _TARGET:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return None
        load = spec.loader.exec_module

        def exec_module(module) -> None:  # noqa: ANN001
            load(module)
            module.uvicorn = _Uvicorn(module.uvicorn, os.environ["AIRFLOW_RUNNER_LOG_SERVER_HOST"])

        spec.loader.exec_module = exec_module
        return spec


class _Uvicorn:
    """``uvicorn`` as serve_logs sees it, with ``run(host="")`` bound to one address instead."""

    def __init__(self, uvicorn, host: str):  # noqa: ANN001
        self._uvicorn, self._host = uvicorn, host

    def __getattr__(self, name: str):
        return getattr(self._uvicorn, name)

    def run(self, app, **kwargs):  # noqa: ANN001
        if kwargs.get("host") in (None, "", "0.0.0.0", "::"):
            kwargs["host"] = self._host
        return self._uvicorn.run(app, **kwargs)


if os.environ.get("AIRFLOW_RUNNER_LOG_SERVER_HOST"):
    sys.meta_path.insert(0, _LocalLogServer())
