"""Walk-forward fold plans: train / validation / test date ranges, rolling or anchored.

A plan (the ``folds`` section of configs/walk_forward.yaml) tiles the out-of-sample period
[``test_start``, ``test_end``) with test segments of ``test_days``, one every ``step_days``
(default: ``test_days``, so the segments are contiguous and stitch into one account). Fold k::

    test_start_k = test_start + k * step
    test_k       = [test_start_k, min(test_start_k + test, test_end))
    validation_k = [test_start_k - validation, test_start_k)
    train_k      = [train_start_k, test_start_k - validation)
        rolling:  train_start_k = test_start_k - validation - train     (a window of fixed length)
        anchored: train_start_k = train_start_0                          (it grows by one step a fold)

so fold 0 is the same in both modes. Every range is half-open in UTC epoch milliseconds of bar OPEN
times. By construction no test bar lies inside its fold's training or validation range (validation
ends where the test starts, training where validation starts) and test segments never overlap
(``step_days >= test_days`` is required). A test segment uses earlier bars only as warm history for
its features, never to fit anything.

No embargo gap is needed between the ranges: a training episode's last reward uses the next bar's
price only inside the training range (the env plays the training bars alone), and the decision at
a test bar uses bars up to its own close.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from settings import ConfigError, check_keys, format_ms, parse_time_ms

MS_PER_DAY = 86_400_000
FOLD_MODES = ("rolling", "anchored")
PLAN_KEYS = {"mode", "test_start", "test_end", "train_days", "validation_days", "test_days", "step_days"}


@dataclass(frozen=True)
class Fold:
    """One fold's half-open [start, end) ranges of bar open times (UTC ms)."""

    index: int
    train_start_ms: int
    train_end_ms: int
    validation_start_ms: int
    validation_end_ms: int
    test_start_ms: int
    test_end_ms: int

    @property
    def name(self) -> str:
        return f"fold_{self.index}"

    def ranges_ms(self) -> dict[str, tuple[int, int]]:
        """{"train"|"validation"|"test": (start_ms, end_ms)}."""
        return {
            "train": (self.train_start_ms, self.train_end_ms),
            "validation": (self.validation_start_ms, self.validation_end_ms),
            "test": (self.test_start_ms, self.test_end_ms),
        }

    def splits(self) -> dict[str, dict[str, str]]:
        """The ranges in Train.py's ``data.splits`` shape (UTC times, ``2021-01-01 00:00``)."""
        return {
            name: {"start": format_ms(lo), "end": format_ms(hi)}
            for name, (lo, hi) in self.ranges_ms().items()
        }

    def as_row(self) -> dict[str, Any]:
        """A flat record (ms and UTC times) for folds.csv and plan.json."""
        row: dict[str, Any] = asdict(self)
        for name, (lo, hi) in self.ranges_ms().items():
            row[f"{name}_start"] = format_ms(lo)
            row[f"{name}_end"] = format_ms(hi)
        return row


def _days(plan: Mapping[str, Any], key: str, allow_none: bool = False) -> float | None:
    value = plan.get(key)
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"folds.{key} must be a positive number of days, got {value!r}")
    return float(value)


def plan_folds(plan: Mapping[str, Any]) -> list[Fold]:
    """The folds of a ``folds`` config section (see the module docstring); ConfigError naming the key."""
    check_keys(dict(plan), PLAN_KEYS, "folds")
    mode = plan.get("mode", "rolling")
    if mode not in FOLD_MODES:
        raise ConfigError(f"folds.mode must be one of {FOLD_MODES}, got {mode!r}")
    for key in ("test_start", "test_end"):
        if plan.get(key) is None:
            raise ConfigError(f"folds.{key} is required (a UTC date such as 2019-01-01)")
    test_start = parse_time_ms(plan["test_start"], "folds.test_start")
    test_end = parse_time_ms(plan["test_end"], "folds.test_end")
    if test_start >= test_end:
        raise ConfigError(
            f"folds.test_start {plan['test_start']} must be before folds.test_end {plan['test_end']}"
        )
    train = round(_days(plan, "train_days") * MS_PER_DAY)
    validation = round(_days(plan, "validation_days") * MS_PER_DAY)
    test = round(_days(plan, "test_days") * MS_PER_DAY)
    step_days = _days(plan, "step_days", allow_none=True)
    step = test if step_days is None else round(step_days * MS_PER_DAY)
    if step < test:
        raise ConfigError(
            f"folds.step_days ({step / MS_PER_DAY:g}) is shorter than folds.test_days "
            f"({test / MS_PER_DAY:g}): "
            "test segments would overlap; use step_days >= test_days (null: equal)"
        )
    first_train_start = test_start - validation - train
    folds = []
    start = test_start
    while start < test_end:
        val_start = start - validation
        train_start = first_train_start if mode == "anchored" else val_start - train
        folds.append(
            Fold(
                index=len(folds),
                train_start_ms=train_start,
                train_end_ms=val_start,
                validation_start_ms=val_start,
                validation_end_ms=start,
                test_start_ms=start,
                test_end_ms=min(start + test, test_end),
            )
        )
        start += step
    check_plan(folds)
    return folds


def check_plan(folds: list[Fold]) -> None:
    """Assert the plan's invariants (raise ValueError naming the fold): ordered non-empty ranges, no
    test bar inside its fold's training or validation range, no overlap between test segments."""
    for fold in folds:
        ranges = fold.ranges_ms()
        for name, (lo, hi) in ranges.items():
            if not lo < hi:
                raise ValueError(f"{fold.name}: empty {name} range")
        if not (
            fold.train_end_ms <= fold.validation_start_ms and fold.validation_end_ms <= fold.test_start_ms
        ):
            raise ValueError(f"{fold.name}: test bars fall inside training or validation")
    for a, b in zip(folds, folds[1:], strict=False):
        if b.test_start_ms < a.test_end_ms:
            raise ValueError(f"{a.name} and {b.name}: test segments overlap")


def check_coverage(folds: list[Fold], data_start_ms: int, data_end_ms: int) -> None:
    """ConfigError when the data's [data_start_ms, data_end_ms) does not hold every fold's ranges.

    The training range needs no history before it (the training env warms up inside its own range);
    each test segment's warm history comes from the bars before it, which the plan always has."""
    need_from = min(f.train_start_ms for f in folds)
    need_to = max(f.test_end_ms for f in folds)
    if need_from < data_start_ms:
        raise ConfigError(
            f"the first fold trains from {format_ms(need_from)} but the data starts at "
            f"{format_ms(data_start_ms)}: move folds.test_start later or shorten folds.train_days / "
            "folds.validation_days"
        )
    if need_to > data_end_ms:
        raise ConfigError(
            f"the last test segment ends at {format_ms(need_to)} but the data ends at "
            f"{format_ms(data_end_ms)}: move folds.test_end earlier"
        )
