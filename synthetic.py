"""Synthetic crypto-like market with a planted predictive feature, and the oracle that knows it.

This is how the project proves that learning works: a market where the achievable edge is known.

Return model (per pair i, log returns, bar t+1)::

    r[t+1, i] = drift[k] + vol * vol_scale[k] * (rho * s[t, i] + sqrt(1 - rho**2) * e[t+1, i])

- ``s[t, i]`` is the planted feature ``signal`` (unit variance, AR(1) with ``signal_persistence``),
  observed at the close of bar t; its correlation with the NEXT bar's return is ``signal_corr``
  (``rho``) exactly when the regime drift is 0. ``signal_corr: 0`` gives a market with no edge.
- ``e`` is unit Gaussian noise with correlation ``pair_corr`` between pairs (one common factor).
- ``k`` is the regime, a Markov chain that switches with probability ``regime_switch_prob`` per bar
  to a uniformly chosen other regime of ``regimes`` (each a ``vol_scale`` and ``drift_bps``).

Candles: open[t] = close[t-1] (a 24/7 market without gaps), high/low wrap open and close with a
random wick, volume is log-normal. Features are the project's indicators (`indicators.py`, the same
definitions as the dbt models) plus ``signal``; the indicators' warm-up bars are generated before
``start`` and dropped, so the first returned bar opens at ``start`` and every row is warm.

Hierarchy market (``signal_window: k > 0``): the planted feature ``signal`` is a stream of i.i.d.
unit pulses ``p[t, i]``, and what predicts the next bar is the mean of the pair's k PREVIOUS pulses,
``s[t, i] = (p[t-1, i] + ... + p[t-k, i]) / sqrt(k)`` (unit variance; autocorrelation (k-1)/k from
one bar to the next), which takes the place of the AR(1) signal in the return model. Bar t's own
pulse is independent of ``s[t]``, so the latest bar's features carry (almost) nothing about the next
return: the meta-agent, which sees only every pair's latest bar, cannot find the edge alone, while a
specialist watching a window of its pair's last k+1 bars (the env's ``window``, 8 by default, for
k = 7) can. Only the price moves the state has already caused leak it into single-bar indicators,
and weakly (correlation ~rho**2 with the next return). ``signal_persistence`` plays no part there.

The oracle knows the plant: it goes long the pairs whose signal is above a threshold (hysteresis:
it keeps a position until the signal falls below ``exit_threshold``), equal weight among them, cash
otherwise. `tune_oracle` picks the threshold that maximizes log growth on given (training) bars.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from market_arrays import MarketData
from settings import ConfigError, merge, parse_time_ms

SIGNAL_FEATURE = "signal"

# Defaults of the synthetic source (``market_data.load({"kind": "synthetic", ...})``, e.g. a
# ``data.source`` section of configs/train.yaml); any subset can be overridden, unknown keys fail.
SYNTHETIC_DEFAULTS: dict[str, Any] = {
    "n_pairs": 4,  # number of pairs
    "n_bars": 13_200,  # 1h bars from 2020-01-01: covers train.yaml's default splits (to 2021-07-01)
    "timeframe": "1h",  # ccxt timeframe string: spacing of open_time_ms
    "start": "2020-01-01",  # open time (UTC) of the first returned bar
    "seed": 0,  # the whole market is a function of this seed
    "symbols": None,  # null: SYN0/USDT, SYN1/USDT, ...
    "vol": 0.01,  # per-bar log-return standard deviation in the base regime
    "pair_corr": 0.3,  # correlation of the pairs' return noise (one common factor)
    "signal_corr": 0.1,  # correlation of the planted feature with the next bar's return (0: no edge)
    "signal_persistence": 0.9,  # AR(1) coefficient of the planted feature (0: i.i.d. per bar)
    "signal_window": 0,  # k > 0: hierarchy market, the signal is the mean of the previous k pulses
    "regimes": [  # each regime scales the volatility and adds a drift (basis points per bar)
        {"vol_scale": 1.0, "drift_bps": 0.0},
        {"vol_scale": 2.0, "drift_bps": 0.0},
    ],
    "regime_switch_prob": 0.002,  # per bar, to another regime; 0 keeps the first regime throughout
    "start_price": 100.0,  # quote currency
    "volume_mean": 1_000.0,  # base units per bar (log-normal around it)
}




def generate(**params: Any) -> MarketData:
    """A synthetic `MarketData` (see the module docstring); keys of `SYNTHETIC_DEFAULTS` as keywords."""
    from binance.symbols import timeframe_ms  # lazy: the binance package imports ccxt
    from indicators import FEATURE_NAMES, WARM_BARS, compute_indicators

    cfg = merge(SYNTHETIC_DEFAULTS, params, "synthetic source")
    n, steps = int(cfg["n_pairs"]), int(cfg["n_bars"])
    rho, phi, corr = float(cfg["signal_corr"]), float(cfg["signal_persistence"]), float(cfg["pair_corr"])
    if n < 1 or steps < 2:
        raise ConfigError(f"synthetic source needs n_pairs >= 1 and n_bars >= 2, got {n}, {steps}")
    if not (-1.0 < rho < 1.0 and 0.0 <= phi < 1.0 and 0.0 <= corr < 1.0):
        raise ConfigError(
            "synthetic: need -1 < signal_corr < 1, 0 <= signal_persistence < 1, 0 <= pair_corr < 1"
        )
    k = cfg["signal_window"]
    if not (isinstance(k, int) and not isinstance(k, bool) and k >= 0):
        raise ConfigError(f"synthetic: signal_window must be an integer >= 0 (0: planted market), got {k!r}")
    if float(cfg["vol"]) <= 0.0:
        raise ConfigError("synthetic: vol must be positive")
    regimes = list(cfg["regimes"])
    if not regimes:
        raise ConfigError("synthetic: regimes must list at least one regime")
    for regime in regimes:
        if set(regime) - {"vol_scale", "drift_bps"}:
            raise ConfigError(f"synthetic: regime keys are vol_scale, drift_bps; got {sorted(regime)}")
    symbols = list(cfg["symbols"] or [f"SYN{i}/USDT" for i in range(n)])
    if len(symbols) != n:
        raise ConfigError(f"synthetic: {len(symbols)} symbols for n_pairs={n}")

    rng = np.random.default_rng(int(cfg["seed"]))
    total = steps + WARM_BARS
    # Regime path: a Markov chain that jumps to a uniformly chosen other regime.
    n_regimes = len(regimes)
    regime = np.zeros(total, dtype=np.int64)
    switches = rng.random(total) < float(cfg["regime_switch_prob"])
    jumps = rng.integers(1, max(n_regimes, 2), total)
    for t in range(1, total):
        regime[t] = (regime[t - 1] + jumps[t] * switches[t]) % n_regimes if n_regimes > 1 else 0
    vol_scale = np.array([float(r.get("vol_scale", 1.0)) for r in regimes])[regime]
    drift = np.array([float(r.get("drift_bps", 0.0)) / 1e4 for r in regimes])[regime]

    shocks = rng.standard_normal((total, n))
    if k > 0:
        # Hierarchy market: the feature shows bar t's pulse, the returns follow the previous k pulses.
        observed, signal = shocks, pulse_state(shocks, k)
    else:
        # Planted feature: stationary AR(1) with unit variance, observed as it is.
        signal = np.empty((total, n))
        signal[0] = shocks[0]
        keep, fresh = phi, np.sqrt(1.0 - phi * phi)
        for t in range(1, total):
            signal[t] = keep * signal[t - 1] + fresh * shocks[t]
        observed = signal
    # Return noise: one common factor gives pair correlation `corr`.
    common = rng.standard_normal((total, 1))
    noise = np.sqrt(corr) * common + np.sqrt(1.0 - corr) * rng.standard_normal((total, n))
    log_ret = np.zeros((total, n))
    sigma = float(cfg["vol"]) * vol_scale[1:, None]
    log_ret[1:] = drift[1:, None] + sigma * (rho * signal[:-1] + np.sqrt(1.0 - rho * rho) * noise[1:])

    close = float(cfg["start_price"]) * np.exp(np.cumsum(log_ret, axis=0))
    open_ = np.vstack((np.full((1, n), float(cfg["start_price"])), close[:-1]))
    wick = np.abs(rng.normal(0.0, 0.3 * float(cfg["vol"]), (2, total, n)))
    high = np.maximum(open_, close) * np.exp(wick[0])
    low = np.minimum(open_, close) * np.exp(-wick[1])
    volume = float(cfg["volume_mean"]) * np.exp(rng.normal(-0.045, 0.3, (total, n)))

    step_ms = timeframe_ms(str(cfg["timeframe"]))
    start_ms = parse_time_ms(cfg["start"], "synthetic start")
    times = start_ms + (np.arange(total, dtype=np.int64) - WARM_BARS) * step_ms
    names = list(FEATURE_NAMES) + [SIGNAL_FEATURE]
    features = np.empty((total, n, len(names)))
    for i in range(n):
        ind = compute_indicators(open_[:, i], high[:, i], low[:, i], close[:, i], volume[:, i])
        for f, name in enumerate(FEATURE_NAMES):
            features[:, i, f] = ind[name]
    features[:, :, -1] = observed
    keep_rows = slice(WARM_BARS, total)
    meta = {
        "source": "synthetic",
        "params": {k: v for k, v in cfg.items()},
        "signal_feature": SIGNAL_FEATURE,
        "regime": regime[keep_rows].copy(),
        "sigma": float(cfg["vol"]) * vol_scale[keep_rows],
    }
    return MarketData(
        symbols=symbols,
        timeframe=str(cfg["timeframe"]),
        open_time_ms=times[keep_rows],
        open=open_[keep_rows],
        high=high[keep_rows],
        low=low[keep_rows],
        close=close[keep_rows],
        volume=volume[keep_rows],
        features=features[keep_rows],
        feature_names=names,
        meta=meta,
    )


# ----------------------------------------------------------------------------------------------
# Oracle
# ----------------------------------------------------------------------------------------------


def signal_of(data: MarketData, feature: str = SIGNAL_FEATURE) -> np.ndarray:
    """The planted feature [T, N] of ``data`` (ValueError when the data has none)."""
    if feature not in data.feature_names:
        raise ValueError(f"the data has no {feature!r} feature (features: {data.feature_names})")
    return data.features[:, :, data.feature_names.index(feature)]


def pulse_state(pulses: np.ndarray, window: int) -> np.ndarray:
    """The hierarchy market's predictive state [T, N]: row t is the sum of ``pulses`` rows
    t-window .. t-1 over sqrt(window) (rows before the first count as 0; row t's own pulse is left out)."""
    steps, n = pulses.shape
    before = np.cumsum(np.vstack((np.zeros((1, n)), pulses)), axis=0)[:steps]  # row t: sum of rows < t
    before_window = np.vstack((np.zeros((window, n)), before))[:steps]  # row t: sum of rows < t-window
    return (before - before_window) / np.sqrt(window)


def predictive_signal(data: MarketData) -> np.ndarray:
    """What predicts each pair's next return [T, N], from the data up to each bar's close: the planted
    feature itself, or in the hierarchy market (``signal_window`` k > 0 in the generator's params)
    the `pulse_state` of its last k bars (within ``data``: a split's first k bars see fewer pulses)."""
    window = int(data.meta.get("params", {}).get("signal_window") or 0)
    signal = signal_of(data)
    return pulse_state(signal, window) if window > 0 else signal


def oracle_targets(
    data: MarketData, threshold: float = 1.0, exit_threshold: float | None = None
) -> np.ndarray:
    """Target weights [T, N+1] (pairs then cash) decided at each bar's close from the planted signal
    (`predictive_signal`: in the hierarchy market, the state of the previous pulses).

    A pair enters when its signal exceeds ``threshold`` and stays until it falls below
    ``exit_threshold`` (default ``threshold / 2``); active pairs share the capital equally.
    """
    signal = predictive_signal(data)
    exit_at = threshold / 2.0 if exit_threshold is None else exit_threshold
    steps, n = signal.shape
    active = np.zeros(n, dtype=bool)
    out = np.zeros((steps, n + 1))
    for t in range(steps):
        s = signal[t]
        active = np.where(active, s > exit_at, s > threshold)
        k = int(active.sum())
        if k:
            out[t, :n] = active / k
        else:
            out[t, n] = 1.0
    return out


def log_growth(
    data: MarketData, targets: np.ndarray, portfolio_cfg: Mapping[str, Any] | None = None
) -> float:
    """Log growth of trading ``targets`` through `Portfolio` with the env's timing (decide at the
    close of bar t, execute at the open of t+1, mark at the last close)."""
    from backtest import simulate_targets

    record = simulate_targets("oracle", data, targets, dict(portfolio_cfg or {}))
    return float(np.log(record.equity[-1] / record.equity[0]))


def tune_oracle(
    data: MarketData,
    portfolio_cfg: Mapping[str, Any] | None = None,
    thresholds: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0),
) -> tuple[float, float]:
    """(best threshold, its log growth) on ``data`` (the training bars) over a grid of thresholds."""
    best = max((log_growth(data, oracle_targets(data, th), portfolio_cfg), th) for th in thresholds)
    return best[1], best[0]
