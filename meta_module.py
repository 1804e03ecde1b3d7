"""The meta-agent's allocator as an RLlib module: one scoring network shared by every pair.

A plain MLP over the meta-agent's whole observation must learn the same "how attractive is this
pair" function once per pair position, from a quarter of the data each (4 pairs). Here one small
network scores every pair from that pair's own slice of the observation (its features, its
specialist's call, its current weight), the way EIIE does it (Jiang, Xu & Liang 2017, "A Deep
Reinforcement Learning Framework for the Financial Portfolio Management Problem"). Every pair's bars
then train the same weights, and the allocation does not depend on the order of the pairs.

Cash is scored by the same network, as an asset with neutral features (z-scores 0), no call and its
own current weight, plus a learned offset. Scoring cash by a constant instead made holdings sticky
one way only: the scorer learns to favour what it already holds (it saves fees), a pair held stayed
held while cash held did not stay cash, and the agent ended up invested ~95% of the time, even with
no signal anywhere (learning check: 59% of the oracle in a falling held-out market).

The scores are the means of the Gaussian over the env's N+1 logits (the env takes the softmax),
with a learned, state-independent log std per logit. The value function is an ordinary MLP over
the whole observation: it has to see the portfolio as a whole.

Observation layout: `decision.ObservationLayout` (``[N*F features (pair-major), N calls, N+1 weights
(pairs, then cash)]``); the action space's N+1 logits tell N. The scoring itself is
`decision.pair_scores`, which the decision core also runs when it loads a saved run without Ray.
"""

from __future__ import annotations

from typing import Any

import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.distribution.torch.torch_distribution import TorchDiagGaussian
from ray.rllib.core.models.torch.primitives import TorchMLP
from ray.rllib.core.rl_module.apis.value_function_api import ValueFunctionAPI
from ray.rllib.core.rl_module.torch import TorchRLModule
from torch import nn

from decision import ObservationLayout, pair_scores


class PairSharedAllocator(TorchRLModule, ValueFunctionAPI):
    """PPO module for the meta-agent. ``model_config``: ``hiddens`` (list of layer sizes, scorer and
    value net), ``activation`` (any of RLlib's, as for the MLP meta), ``log_std_init`` (null: 0, std 1) and
    ``log_std_clip`` (null: none; else the log std is clamped to +-clip, like RLlib's heads)."""

    def setup(self) -> None:
        cfg = self.model_config
        n = self.n_pairs = int(self.action_space.shape[0]) - 1
        obs_dim = int(self.observation_space.shape[0])
        try:
            self.layout = ObservationLayout.for_meta(obs_dim, n)
        except ValueError as exc:
            raise ValueError(
                f"observation ({obs_dim},) and action ({n + 1},) spaces are not the meta-agent's: "
                "expected [N*F features, N calls, N+1 weights] and N+1 logits"
            ) from exc
        self.n_features = self.layout.n_features
        hiddens, activation = [int(h) for h in cfg["hiddens"]], str(cfg["activation"])
        # Scorer input per pair: its F features, its specialist's call and its current weight.
        self.scorer = TorchMLP(
            input_dim=self.n_features + 2,
            hidden_layer_dims=hiddens,
            hidden_layer_activation=activation,
            output_dim=1,
        )
        last = [m for m in self.scorer.modules() if isinstance(m, nn.Linear)][-1]
        with torch.no_grad():  # start near equal scores: no random tilt towards arbitrary features
            last.weight.mul_(0.01)
            last.bias.zero_()
        self.cash_offset = nn.Parameter(torch.zeros(1))
        self.log_std = nn.Parameter(torch.full((n + 1,), float(cfg.get("log_std_init") or 0.0)))
        clip = cfg.get("log_std_clip")
        self.log_std_clip = None if clip is None else float(clip)
        self.value_net = TorchMLP(
            input_dim=obs_dim, hidden_layer_dims=hiddens, hidden_layer_activation=activation, output_dim=1
        )
        self.action_dist_cls = TorchDiagGaussian

    def _scores(self, obs: torch.Tensor) -> torch.Tensor:
        return pair_scores(self.scorer, self.cash_offset, obs, self.layout)

    def _forward(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        mean = self._scores(batch[Columns.OBS])
        log_std = (
            self.log_std
            if self.log_std_clip is None
            else self.log_std.clamp(-self.log_std_clip, self.log_std_clip)
        )
        return {Columns.ACTION_DIST_INPUTS: torch.cat((mean, log_std.expand_as(mean)), dim=-1)}

    def compute_values(self, batch: dict[str, Any], embeddings: Any = None) -> torch.Tensor:
        return self.value_net(batch[Columns.OBS]).squeeze(-1)
