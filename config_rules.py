"""Config rules: what one key accepts (`Rule`: type, range or choices, said in words) and
`check_schema`, which checks a config against a ``{dotted key: Rule}`` schema.

The schemas live beside their defaults: `env_config.ENV_SCHEMA` (the env's settings) and
`run_config.TRAIN_SCHEMA` (the rest of a training run). Every failure is a `settings.ConfigError`
naming the key, the value and what is allowed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from settings import ConfigError


@dataclass(frozen=True)
class Rule:
    """What one key accepts: ``allowed`` says it in words (it ends up in the error message)."""

    allowed: str
    accepts: Callable[[Any], bool]

    def check(self, key: str, value: Any) -> None:
        if self.accepts(value):
            return
        hint = ""
        if isinstance(value, str):
            try:
                float(value)
                hint = " (YAML 1.1 reads exponents without a dot, such as 1e-4, as text: write 1.0e-4)"
            except ValueError:
                pass
        raise ConfigError(f"{key} = {value!r} is not allowed: it must be {self.allowed}{hint}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _or_null(rule: Rule, null: str | None) -> Rule:
    if null is None:
        return rule
    return Rule(f"{rule.allowed}, or null ({null})", lambda v: v is None or rule.accepts(v))


def integer(low: int | None = None, high: int | None = None, *, null: str | None = None) -> Rule:
    """An integer in [low, high]; ``null`` (its meaning) also allows null."""
    words = "an integer" + (f" >= {low}" if low is not None else "")
    words += f" <= {high}" if high is not None else ""
    rule = Rule(words, lambda v: _is_int(v) and (low is None or v >= low) and (high is None or v <= high))
    return _or_null(rule, null)


def number(
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    null: str | None = None,
) -> Rule:
    """A finite number within the bounds (``*_open``: that bound excluded)."""
    if low is not None and high is not None:
        words = f"a finite number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    elif low is not None:
        words = f"a finite number {'>' if low_open else '>='} {low:g}"
    elif high is not None:
        words = f"a finite number {'<' if high_open else '<='} {high:g}"
    else:
        words = "a finite number"

    def accepts(v: Any) -> bool:
        if not _is_number(v):
            return False
        if low is not None and (v <= low if low_open else v < low):
            return False
        return not (high is not None and (v >= high if high_open else v > high))

    return _or_null(Rule(words, accepts), null)


def boolean() -> Rule:
    return Rule("true or false", lambda v: isinstance(v, bool))


def one_of(*choices: Any, null: str | None = None) -> Rule:
    return _or_null(Rule(f"one of {list(choices)}", lambda v: isinstance(v, str) and v in choices), null)


def text(null: str | None = None) -> Rule:
    return _or_null(Rule("a non-empty string", lambda v: isinstance(v, str) and bool(v)), null)


def layer_sizes() -> Rule:
    return Rule(
        "a non-empty list of positive layer sizes such as [64, 64]",
        lambda v: isinstance(v, list) and bool(v) and all(_is_int(h) and h > 0 for h in v),
    )


def names(null: str | None = None) -> Rule:
    return _or_null(
        Rule("a list of names", lambda v: isinstance(v, list) and all(isinstance(s, str) for s in v)), null
    )


def mapping(value_rule: Rule) -> Rule:
    return Rule(
        f"a mapping of names to {value_rule.allowed}",
        lambda v: isinstance(v, dict)
        and all(isinstance(k, str) and value_rule.accepts(x) for k, x in v.items()),
    )


def per_pair(low: float = 0.0) -> Rule:
    """Portfolio's exchange rules: off, one number for every pair, or {symbol: number}."""
    one = number(low)
    return Rule(
        f"null (off), {one.allowed} for every pair, or a mapping of symbols to such numbers",
        lambda v: v is None or one.accepts(v) or mapping(one).accepts(v),
    )


def anything(allowed: str) -> Rule:
    """Keys checked elsewhere (by their own validator, named in ``allowed``)."""
    return Rule(allowed, lambda v: True)


def get_path(cfg: Mapping[str, Any], dotted: str) -> Any:
    node: Any = cfg
    for key in dotted.split("."):
        node = node[key]
    return node


def check_schema(cfg: Mapping[str, Any], schema: Mapping[str, Rule]) -> None:
    """Check every key of ``schema`` present in ``cfg`` against its rule (types, ranges, choices)."""
    for key, rule in schema.items():
        try:
            value = get_path(cfg, key)
        except (KeyError, TypeError):
            continue  # missing sections are completed from the defaults; unknown keys fail in merge
        rule.check(key, value)
