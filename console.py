"""What a person sees: the project's own progress on the console, library chatter in log files.

`route_library_output(log_path)` (called by entry points before the noisy libraries start: the
demo at its start, `training.init_ray` before Ray) sends, for the rest of the process:

- the Python loggers of Ray/RLlib, dbt, Airflow, alembic, pgserver, HTTP clients and the like,
  and Python warnings (deprecations), to ``log_path`` with ANSI colour codes stripped;
- everything written to file descriptor 2 (Ray's C++ core worker lines, the Ray processes started
  afterwards, which inherit it) to ``log_path`` too, while ``sys.stderr`` (Python tracebacks, the
  project's own warnings and errors, its log handlers) keeps writing to the console.

Nothing is dropped: it all stays in the log file for debugging. `number` formats values for
people and shows "–" where nothing was measured yet (never ``nan``).
"""

from __future__ import annotations

import logging
import math
import os
import re
import sys
from pathlib import Path
from typing import Any, TextIO

# Loggers whose INFO/WARNING lines are for debugging, not for the person running a command.
# ("ray.rllib" and "ray.tune" set handlers of their own that do not propagate to "ray".)
LIBRARY_LOGGERS = (
    "ray", "ray.rllib", "ray.tune", "dbt", "airflow", "alembic", "pgserver", "httpx", "httpcore",
    "urllib3", "filelock", "matplotlib", "torch", "tensorboard", "py.warnings",
)  # fmt: skip
MISSING = "–"  # shown where a value was not measured (yet)

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


def strip_ansi(text: str) -> str:
    """``text`` without ANSI escape sequences (colours, cursor moves)."""
    return _ANSI.sub("", text)


class _PlainFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return strip_ansi(super().format(record))


class _Routing:
    """Process-wide state: the log file in use and the console stream kept for Python."""

    path: Path | None = None
    handler: logging.Handler | None = None  # writes to the log file
    console: TextIO | None = None  # Python's stderr once fd 2 is the log file
    console_handler: logging.Handler | None = None  # the project's warnings and errors


def route_library_output(log_path: str | Path) -> Path:
    """Send library chatter to ``log_path`` from now on (see the module docstring).

    Called again (e.g. the demo, then `training.init_ray`), it keeps the first file and re-attaches
    its handler to the library loggers, since importing a library (Ray) adds console handlers of
    its own. Returns the log file in use.
    """
    if _Routing.path is None:
        path = Path(log_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        stream = path.open("a", buffering=1, encoding="utf-8")
        handler = logging.StreamHandler(stream)
        handler.setFormatter(_PlainFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        _Routing.path, _Routing.handler = path, handler
        _redirect_fd2(stream)
        logging.captureWarnings(True)  # warnings -> the "py.warnings" logger -> the file
    if "ray" in sys.modules:
        # Importing RLlib adds a console handler to "ray.rllib": import it now, so it is replaced.
        import ray.rllib  # noqa: F401
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers[:] = [_Routing.handler]
        logger.propagate = False
    assert _Routing.path is not None
    return _Routing.path


def _redirect_fd2(stream: TextIO) -> None:
    # Keep a duplicate of the console's fd for Python's own stderr, then point fd 2 at the log.
    try:
        sys.stderr.flush()
        console_fd = os.dup(2)
    except (OSError, ValueError):  # no usable fd 2 (embedded interpreters): loggers only
        return
    console = os.fdopen(console_fd, "w", buffering=1, encoding="utf-8", errors="replace")
    old = sys.stderr
    os.dup2(stream.fileno(), 2)
    sys.stderr = console
    _Routing.console = console
    # Handlers made earlier (logging.basicConfig in main) hold the old stderr object, whose fd is
    # now the log file: give them the console back, so the project's own log lines stay visible.
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream in (old, sys.__stderr__):
            handler.setStream(console)


def routed_log() -> Path | None:
    """The file library output goes to in this process, or None when not routed."""
    return _Routing.path


def number(value: Any, spec: str = ",.3f", width: int = 0) -> str:
    """``value`` formatted with ``spec`` for people; `MISSING` for None or NaN (not measured)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        text = MISSING
    else:
        text = format(value, spec)
    return text.rjust(width)



def setup_entry_point(log_path: str | Path, console_level: int = logging.WARNING) -> Path:
    """For a command's ``main()``: the project's log lines go to the console from ``console_level``
    up and to the log file from INFO up; library output is routed there too (`route_library_output`).

    Safe to call again in the same process (tests run ``main()`` twice): nothing is added twice.
    Returns the log file in use.
    """
    root = logging.getLogger()
    if _Routing.console_handler is None:
        handler = logging.StreamHandler()  # sys.stderr: the console, also after the routing
        handler.setLevel(console_level)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
        _Routing.console_handler = handler
    path = route_library_output(log_path)
    if _Routing.handler not in root.handlers:
        root.addHandler(_Routing.handler)
    root.setLevel(logging.INFO)
    return path
