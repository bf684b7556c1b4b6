"""The DQN classes the SB3 teacher training builds: Stable-Baselines3's ``DQN`` with two changes.

- **Policy warm-up** (resumed parts): SB3 plays uniformly random actions until ``learning_starts``.
  A resumed part's replay must look like the one its stopped part had, so it plays its own
  (restored) network, epsilon-greedy at the schedule's epsilon, from the first step.
- **Bootstrapping on epsilon-greedy play** (``bootstrap_epsilon`` > 0): Q-learning's target
  ``r + γ max_a Q(s', a)`` is the value of acting greedily from s' on. Our evaluation protocol
  does not act greedily: 5% of its actions are uniformly random, and a network trained on the
  max target scored 5-7 points a game less at epsilon 0.05 than at 0.01 (2026-12-07). Bootstrapping
  on the value of epsilon-greedy play, ``(1 - ε) max_a Q + ε mean_a Q`` (expected Sarsa for the
  epsilon-greedy policy; Sutton & Barto 2018, 6.6; van Seijen et al. 2009), learns what each action
  is worth when later actions are random at that rate, so the greedy choice keeps a margin
  for them (Sutton & Barto's cliff walk: the safer path, and the better score while exploring).
  At 0 SB3's own ``train`` runs, unchanged.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def epsilon_greedy_value(next_q: torch.Tensor, epsilon: float) -> torch.Tensor:
    """The value at each row's state of playing greedily with probability 1 - ε and a uniformly random
    action (the greedy one among them) with probability ε; ε = 0 is Q-learning's max."""
    return (1.0 - epsilon) * next_q.max(dim=1).values + epsilon * next_q.mean(dim=1)


def dqn_classes(bootstrap_epsilon: float = 0.0) -> tuple[type, type]:
    """(the class a new training builds, the class a resumed part builds)."""
    from stable_baselines3 import DQN

    class KdDQN(DQN):
        def train(self, gradient_steps: int, batch_size: int = 100) -> None:
            if not bootstrap_epsilon:
                return super().train(gradient_steps, batch_size)
            return self.train_bootstrapping_on(bootstrap_epsilon, gradient_steps, batch_size)

        def train_bootstrapping_on(self, epsilon: float, gradient_steps: int, batch_size: int) -> None:
            """SB3's update (Huber loss on n-step targets from the target network, gradient norm
            clipped at ``max_grad_norm``) with the target's max replaced by ``epsilon_greedy_value``."""
            self.policy.set_training_mode(True)
            self._update_learning_rate(self.policy.optimizer)
            losses = []
            for _ in range(gradient_steps):
                batch = self.replay_buffer.sample(batch_size, env=self._vec_normalize_env)
                # n-step replay stores each sample's discount (gamma**k, k cut short by an episode end)
                discounts = batch.discounts if batch.discounts is not None else self.gamma
                with torch.no_grad():
                    next_v = epsilon_greedy_value(self.q_net_target(batch.next_observations), epsilon)
                    target = batch.rewards + (1 - batch.dones) * discounts * next_v.reshape(-1, 1)
                taken = torch.gather(self.q_net(batch.observations), dim=1, index=batch.actions.long())
                loss = F.smooth_l1_loss(taken, target)
                losses.append(loss.item())
                self.policy.optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
                self.policy.optimizer.step()
            self._n_updates += gradient_steps
            self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
            self.logger.record("train/loss", float(np.mean(losses)))

    class PolicyWarmupDQN(KdDQN):
        def _sample_action(self, learning_starts, action_noise=None, n_envs=1):
            return super()._sample_action(0, action_noise, n_envs)

    return KdDQN, PolicyWarmupDQN
