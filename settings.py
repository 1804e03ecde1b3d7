"""Project settings: YAML files under ``configs/`` plus environment variables (and ``.env``).

Every part of the project reads its configuration through this module so that a user changes a
value in one place. YAML files are validated strictly: an unknown key is an error that names the
key and the file, because a typo that is silently ignored is worse than a crash.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any

import yaml
from dotenv import load_dotenv

PROJECT_ROOT = Path(__file__).resolve().parent
CONFIG_DIR = PROJECT_ROOT / "configs"

# .env never overrides variables already set in the process environment (CI, Airflow, shells).
load_dotenv(PROJECT_ROOT / ".env", override=False)


class ConfigError(ValueError):
    """A configuration file or value is invalid; the message names the problem and the fix."""


def env(name: str, default: str | None = None) -> str | None:
    """Read an environment variable, treating an empty string as unset."""
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Load a YAML mapping from ``path`` (absolute, or relative to the project or ``configs/``)."""
    candidate = Path(path)
    if not candidate.is_absolute() and not candidate.exists():
        for base in (PROJECT_ROOT, CONFIG_DIR):
            if (base / candidate).exists():
                candidate = base / candidate
                break
    if not candidate.exists():
        raise ConfigError(f"config file {path} not found; pass a path under {CONFIG_DIR}")
    try:
        with candidate.open() as handle:
            data = yaml.safe_load(handle) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {candidate} is not valid YAML: {yaml_problem(exc)}") from None
    except ValueError as exc:  # a well-formed but impossible value, e.g. the date 2021-13-01
        raise ConfigError(f"config file {candidate} holds an impossible value: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {candidate} must hold a mapping at the top level")
    return data


def yaml_problem(exc: yaml.YAMLError) -> str:
    """A parser error in one line: where (line, column, 1-based) and what."""
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + str(getattr(exc, "problem", None) or exc).replace("\n", " ")


def check_keys(section: dict[str, Any], allowed: set[str] | dict[str, Any], where: str) -> None:
    """Raise ConfigError naming every key of ``section`` that is not in ``allowed``."""
    unknown = sorted(set(section) - set(allowed))
    if unknown:
        raise ConfigError(
            f"unknown key(s) {unknown} in {where}; allowed keys are {sorted(allowed)}"
        )


def merge(defaults: dict[str, Any], overrides: dict[str, Any], where: str) -> dict[str, Any]:
    """Deep-merge ``overrides`` into ``defaults``, rejecting keys the defaults do not define."""
    check_keys(overrides, defaults, where)
    merged = dict(defaults)
    for key, value in overrides.items():
        if isinstance(defaults[key], dict) and isinstance(value, dict) and defaults[key]:
            merged[key] = merge(defaults[key], value, f"{where}.{key}")
        else:
            merged[key] = value
    return merged


def parse_time_ms(value: Any, where: str = "time") -> int:
    """UTC epoch milliseconds from epoch ms (int or digit string), an ISO date/datetime string
    (naive means UTC; a trailing Z is accepted) or a date/datetime object.

    Raises ConfigError naming ``where`` and the accepted forms.
    """
    if isinstance(value, bool):
        raise ConfigError(f"{where}: {value!r} is not a time")
    if isinstance(value, int) or (hasattr(value, "dtype") and getattr(value.dtype, "kind", "") in "iu"):
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        value = dt.datetime(value.year, value.month, value.day)
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ConfigError(
                f"{where}: {value!r} is not a date or time; use YYYY-MM-DD, an ISO 8601 time such as "
                "2021-01-01T12:00 (UTC unless an offset is given), or epoch milliseconds"
            ) from None
    if not isinstance(value, dt.datetime):
        raise ConfigError(f"{where}: {value!r} is not a time")
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return int(value.timestamp() * 1000)


def format_ms(ts_ms: int | None) -> str:
    """Epoch milliseconds as a readable UTC time, ``2021-01-01 00:00``; ``-`` for None. The project's
    one timestamp formatter (logs, reports, error messages)."""
    if ts_ms is None:
        return "-"
    return dt.datetime.fromtimestamp(int(ts_ms) / 1000, tz=dt.UTC).strftime("%Y-%m-%d %H:%M")


def data_config() -> dict[str, Any]:
    """The market-data settings (pairs, timeframes, default ranges) from ``configs/data.yaml``."""
    return load_yaml(CONFIG_DIR / "data.yaml")
