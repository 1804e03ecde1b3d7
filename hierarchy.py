"""Is the hierarchy used? Specialists' call quality, the meta-agent's reliance on the calls, and the
fixed call-following meta-agent of the learning check's ablation.

- `FollowCalls`: a fixed meta-agent policy (no learning): equal weight over the pairs whose specialist
  says buy, all cash when none does. With learned specialists it isolates what the specialists learned
  (`bench/learning_check.py`'s "learned specialists + fixed meta" row).
- `call_stats` measures, per pair, the specialist's hit rate (share of its buy/sell calls whose next
  bar moved its way; 50% is a coin) and how often it says buy, and the meta-agent's reliance on the
  calls: the share of its pair weight placed on pairs called buy against the share of buy calls
  (equal when the meta ignores the calls; 1 when it holds only what the specialists call buy).
  `call_diagnostics` plays one evaluation episode for it (the learning check's test split);
  `rllib_env.TwoPhaseEnv` keeps it per training episode and `rllib_env.HierarchyMetrics` (an RLlib
  callback) logs it during training.

Meta-agent observation layout (`SequentialTradingEnv`): ``[N*F features, N calls, N+1 weights]``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

META = "meta"


def meta_calls(observation: np.ndarray, n_pairs: int) -> np.ndarray:
    """The specialists' answers (-1/0/+1) [N] inside a meta-agent observation."""
    from decision import ObservationLayout

    layout = ObservationLayout.for_meta(observation.shape[-1], n_pairs)
    return np.asarray(observation[..., layout.meta_calls])


def follow_logits(calls: np.ndarray, logit_limit: float) -> np.ndarray:
    """Meta logits [N+1] that weight the pairs called buy equally: +limit for them, -limit for the
    rest, cash +limit only when no pair is called buy."""
    buys = np.asarray(calls) > 0.5
    logits = np.full(len(buys) + 1, -logit_limit, dtype=np.float32)
    logits[:-1][buys] = logit_limit
    if not buys.any():
        logits[-1] = logit_limit
    return logits


@dataclass
class FollowCalls:
    """Wraps a policy: specialists act as ``policy`` says, the meta-agent follows their calls.

    Its logits are +``logit_limit`` for pairs called buy and -``logit_limit`` for the others (cash
    +limit only when no pair is called buy), so the env's softmax gives equal weights over the buys
    (to within e^-2*limit of the rest)."""

    policy: Callable[[str, Any], Any]
    n_pairs: int
    logit_limit: float = 5.0

    def __call__(self, agent: str, observation: np.ndarray) -> Any:
        """An AEC env's policy callable: ``policy(agent, obs)`` for specialists, the calls for the meta."""
        if agent != META:
            return self.policy(agent, observation)
        return follow_logits(meta_calls(observation, self.n_pairs), self.logit_limit)

    def act(self, market: Any, t: int, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`decision.Policy.act` with the meta replaced: the wrapped `decision.Policy` answers for the
        specialists, the calls decide the logits (so `decision.play_policy` can play it)."""
        calls, _ = self.policy.act(market, t, weights)
        return calls, follow_logits(calls, self.logit_limit)

    def __getattr__(self, name: str) -> Any:
        # Everything else play_policy reads (env_config, limits, history_bars, check_market) is the
        # wrapped policy's. Looked up only for names the dataclass does not have.
        if name == "policy":
            raise AttributeError(name)
        return getattr(self.policy, name)


def call_stats(
    symbols: list[str], calls: np.ndarray, moves: np.ndarray, targets: np.ndarray
) -> dict[str, Any]:
    """How good the calls were and how much the meta-agent followed them, over B decision bars.

    ``calls`` [B, N] the specialists' answers (-1/0/+1), ``moves`` [B, N] the log move of the bar each
    call bets on (ln(close/open) of the next bar), ``targets`` [B, N+1] the meta's target weights.
    Returns ``hit_rate`` and ``buy_share`` per symbol (NaN hit rate when a pair never called buy or
    sell), ``weight_on_buys`` (mean share of the pair weight held by pairs called buy, over bars with
    some weight in pairs and some buy call) and ``buy_call_share`` (mean share of pairs called buy
    over the same bars: the value of ``weight_on_buys`` for a meta-agent that ignores the calls)."""
    n = len(symbols)
    calls, moves = np.asarray(calls).reshape(-1, n), np.asarray(moves).reshape(-1, n)
    targets = np.asarray(targets).reshape(-1, n + 1)
    out: dict[str, Any] = {"hit_rate": {}, "buy_share": {}}
    for i, symbol in enumerate(symbols):
        decided = calls[:, i] != 0
        hits = np.sign(moves[decided, i]) == calls[decided, i]
        out["hit_rate"][symbol] = float(hits.mean()) if decided.any() else float("nan")
        out["buy_share"][symbol] = float((calls[:, i] > 0).mean()) if len(calls) else float("nan")
    buys = calls > 0.5
    invested = targets[:, :n].sum(axis=1)
    use = (invested > 1e-6) & buys.any(axis=1)
    on_buys = (targets[:, :n] * buys).sum(axis=1)[use] / invested[use]
    out["weight_on_buys"] = float(on_buys.mean()) if use.any() else float("nan")
    out["buy_call_share"] = float(buys[use].mean()) if use.any() else float("nan")
    return out


def call_diagnostics(env: Any, policy: Callable[[str, Any], Any], seed: int | None = 0) -> dict[str, Any]:
    """Play one episode of the AEC ``env`` (eval mode) with ``policy``; `call_stats` of its bars."""
    env.reset(seed=seed)
    raw = env.unwrapped
    n = raw.n_pairs
    log_body = np.log(raw.data.close / raw.data.open)
    bars, calls, targets = [], [], []
    for agent in env.agent_iter():
        obs, _, terminated, truncated, _ = env.last()
        action = None if terminated or truncated else policy(agent, obs)
        if agent == META and action is not None:
            bars.append(raw.bar)
            calls.append(meta_calls(obs, n).copy())
            targets.append(raw.target_weights(action))
        env.step(action)
    moves = log_body[np.asarray(bars, dtype=np.int64) + 1]  # the bar each call bets on
    return call_stats(raw.symbols, np.asarray(calls), moves, np.asarray(targets))


def record_call_stats(record: Any, market: Any, first_bar: int) -> dict[str, Any]:
    """`call_stats` of a `decision.play_policy` record over ``market`` (played from ``first_bar``):
    the calls at each bar's close, the next bar's log body they bet on, and the allocation held
    through that bar (what the meta-agent did with the calls, after the rebalance band)."""
    bars = len(record.equity) - 1
    played = slice(first_bar + 1, first_bar + 1 + bars)
    moves = np.log(market.close[played] / market.open[played])
    return call_stats(list(record.symbols), record.calls[:bars], moves, record.weights_after[1 : bars + 1])


def flat_stats(stats: dict[str, Any]) -> dict[str, float]:
    """`call_stats` as flat scalars for progress logs: ``hit_rate/<BASE>``, ``buy_share/<BASE>``,
    ``hit_rate`` (mean over pairs), ``weight_on_buys``, ``buy_call_share`` and ``reliance`` (their
    difference: 0 when the meta ignores the calls, up to 1 - buy_call_share when it follows them)."""
    out: dict[str, float] = {}
    for key in ("hit_rate", "buy_share"):
        for symbol, value in stats[key].items():
            out[f"{key}/{symbol.split('/')[0]}"] = value
    hits = [v for v in stats["hit_rate"].values() if np.isfinite(v)]
    out["hit_rate"] = float(np.mean(hits)) if hits else float("nan")
    out["weight_on_buys"] = stats["weight_on_buys"]
    out["buy_call_share"] = stats["buy_call_share"]
    out["reliance"] = stats["weight_on_buys"] - stats["buy_call_share"]
    return out
