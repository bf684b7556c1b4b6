"""RLlib glue: build the DQN/PPO algorithm (new API stack), then map its RLModule's greedy path
onto our plain ``MLP`` and verify the mapping.

DQN (no dueling, one atom): ``encoder.net.mlp`` then ``af.net.mlp`` give Q-values.
PPO: ``encoder.actor_encoder`` (or the shared ``encoder.encoder``) then ``pi.net.mlp`` give the
action-distribution logits; the value path is not exported. The mapping is checked by comparing
our network with the module's own forward on random observations.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from kd_system.errors import CheckpointError
from kd_system.policies.networks import MLP

EXPORT_TOLERANCE = 1e-4
ALGORITHMS = ("dqn", "ppo")
# name: (type, algorithms it applies to, help). Defaults per algorithm are in DEFAULTS.
HPARAMS: dict[str, tuple[type, tuple[str, ...], str]] = {
    "lr": (float, ALGORITHMS, "learning rate"),
    "gamma": (float, ALGORITHMS, "discount"),
    "train_batch_size": (int, ALGORITHMS, "DQN: replay minibatch; PPO: env steps per iteration"),
    "grad_clip": (float, ALGORITHMS, "global-norm gradient clip"),
    "num_envs_per_runner": (int, ALGORITHMS, "vectorised envs per env runner"),
    "rollout_fragment_length": (int, ("dqn",), "env steps per env between learner updates"),
    "lambda_": (float, ("ppo",), "GAE lambda"),
    "entropy_coeff": (float, ("ppo",), "entropy bonus"),
    "clip_param": (float, ("ppo",), "PPO ratio clip"),
    "num_epochs": (int, ("ppo",), "SGD epochs per batch"),
    "minibatch_size": (int, ("ppo",), "SGD minibatch"),
    "vf_loss_coeff": (float, ("ppo",), "value-loss weight"),
    "vf_clip_param": (float, ("ppo",), "clip on the squared value error"),
    "n_step": (int, ("dqn",), "n-step returns"),
    "buffer_size": (int, ("dqn",), "replay capacity"),
    "prioritized": (int, ("dqn",), "1: prioritized replay, 0: uniform"),
    "target_update_freq": (int, ("dqn",), "env steps between target-network syncs"),
    "learning_starts": (int, ("dqn",), "env steps before learning"),
    "epsilon_steps": (int, ("dqn",), "env steps to anneal epsilon from 1"),
    "epsilon_final": (float, ("dqn",), "final epsilon"),
    "steps_per_iter": (int, ("dqn",), "minimum env steps per iteration"),
    "training_intensity": (float, ("dqn",), "replayed samples per env step; 0: train_batch_size per "
                                            "rollout_fragment_length x num_envs_per_runner steps"),
}
DEFAULTS: dict[str, dict[str, Any]] = {
    "dqn": dict(lr=5e-4, gamma=0.99, train_batch_size=64, grad_clip=10.0, num_envs_per_runner=1,
                rollout_fragment_length=4, n_step=3, buffer_size=50_000, prioritized=0, target_update_freq=500,
                learning_starts=1000, epsilon_steps=10_000, epsilon_final=0.02, steps_per_iter=1000),
    "ppo": dict(lr=3e-4, gamma=0.99, train_batch_size=4096, grad_clip=0.5, num_envs_per_runner=8,
                lambda_=0.95, entropy_coeff=0.01, clip_param=0.2, num_epochs=10,
                minibatch_size=256, vf_loss_coeff=0.5, vf_clip_param=1e5),
}


def mlp_model_config(hidden) -> dict[str, Any]:
    return {"fcnet_hiddens": list(hidden), "fcnet_activation": "relu", "head_fcnet_hiddens": []}


def build_algo(env: str, env_config: dict[str, Any], algorithm: str, model: dict[str, Any], hp: dict[str, Any],
               seed: int, num_env_runners: int):
    """An RLlib DQN (double-Q, n-step, no dueling) or PPO on the new API stack.

    ``env`` is a Gymnasium id or a name registered with ``ray.tune.registry.register_env``."""
    from ray.rllib.algorithms.dqn import DQNConfig
    from ray.rllib.algorithms.ppo import PPOConfig

    runners = dict(num_env_runners=num_env_runners, num_envs_per_env_runner=int(hp["num_envs_per_runner"]))
    if algorithm == "dqn":
        eps_final = float(hp["epsilon_final"])
        config = (DQNConfig().env_runners(**runners, rollout_fragment_length=int(hp["rollout_fragment_length"]))
                  .training(lr=hp["lr"], gamma=hp["gamma"], train_batch_size_per_learner=int(hp["train_batch_size"]),
                            grad_clip=hp["grad_clip"], dueling=False, double_q=True, num_atoms=1,
                            n_step=int(hp["n_step"]), target_network_update_freq=int(hp["target_update_freq"]),
                            num_steps_sampled_before_learning_starts=int(hp["learning_starts"]),
                            # epsilon_start: where a resumed training's schedule left off (training.py)
                            epsilon=[(0, float(hp.get("epsilon_start", 1.0))), (int(hp["epsilon_steps"]), eps_final)],
                            replay_buffer_config=_buffer_config(hp))
                  .reporting(min_sample_timesteps_per_iteration=int(hp["steps_per_iter"])))
        if hp.get("training_intensity"):  # keeps one update per 4 steps when a runner steps many envs per call
            config = config.training(training_intensity=float(hp["training_intensity"]))
    else:
        config = (PPOConfig().env_runners(**runners)
                  .training(lr=hp["lr"], gamma=hp["gamma"], lambda_=hp["lambda_"], entropy_coeff=hp["entropy_coeff"],
                            clip_param=hp["clip_param"], num_epochs=int(hp["num_epochs"]), use_kl_loss=False,
                            minibatch_size=int(hp["minibatch_size"]), train_batch_size_per_learner=int(hp["train_batch_size"]),
                            vf_loss_coeff=hp["vf_loss_coeff"], vf_clip_param=hp["vf_clip_param"], grad_clip=hp["grad_clip"]))
    if torch.cuda.is_available():  # RLlib's learner on the GPU; env runners stay on CPUs
        config = config.learners(num_learners=0, num_gpus_per_learner=1)
    config = (config.environment(env, env_config=env_config).framework("torch").rl_module(model_config=model)
              .debugging(seed=seed, log_level="ERROR"))
    return config.build_algo()


def _buffer_config(hp: dict[str, Any]) -> dict[str, Any]:
    if hp["prioritized"]:
        return {"type": "PrioritizedEpisodeReplayBuffer", "capacity": int(hp["buffer_size"]), "alpha": 0.6, "beta": 0.4}
    return {"type": "EpisodeReplayBuffer", "capacity": int(hp["buffer_size"])}


def _sequential(part: nn.Module, what: str) -> list[nn.Module]:
    net = getattr(part, "net", None)
    mlp = getattr(net, "mlp", None)
    if not isinstance(mlp, nn.Sequential):
        raise CheckpointError(f"cannot export {what}: expected an RLlib MLP (net.mlp), got {type(part).__name__}")
    return list(mlp)


def policy_path(module: nn.Module, algorithm: str) -> list[nn.Module]:
    """The layers (Linear and activations, in order) from observation to Q-values or logits."""
    if algorithm == "dqn":
        if getattr(module, "uses_dueling", False) or getattr(module, "num_atoms", 1) != 1:
            raise CheckpointError("cannot export a dueling or distributional DQN module; train with dueling=False, num_atoms=1")
        return _sequential(module.encoder, "DQN encoder") + _sequential(module.af, "DQN Q head")
    if algorithm == "ppo":
        wrapper = module.encoder
        actor = getattr(wrapper, "actor_encoder", None) or getattr(wrapper, "encoder", None)
        if actor is None:
            raise CheckpointError(f"cannot export PPO encoder of type {type(wrapper).__name__}")
        return _sequential(actor, "PPO actor encoder") + _sequential(module.pi, "PPO policy head")
    raise CheckpointError(f"cannot export algorithm {algorithm!r}; use dqn or ppo")


def export_mlp(module: nn.Module, algorithm: str, obs_dim: int, num_actions: int,
               hidden: list[int], activation: str) -> MLP:
    """Copy the policy path's weights into a fresh ``MLP(obs_dim, num_actions, hidden, activation)``."""
    layers = policy_path(module, algorithm)
    ours = MLP(obs_dim, num_actions, list(hidden), activation)
    if len(layers) != len(ours.layers):
        raise CheckpointError(f"RLlib {algorithm} policy path has {len(layers)} layers, our MLP {len(ours.layers)}: "
                              "check --hidden and the RLlib model config")
    with torch.no_grad():
        for index, (theirs, mine) in enumerate(zip(layers, ours.layers)):
            if isinstance(mine, nn.Linear):
                if not isinstance(theirs, nn.Linear) or theirs.weight.shape != mine.weight.shape or theirs.bias is None:
                    raise CheckpointError(f"RLlib layer {index} ({theirs}) does not match our {mine}")
                mine.weight.copy_(theirs.weight.detach().cpu())
                mine.bias.copy_(theirs.bias.detach().cpu())
            elif type(theirs) is not type(mine):
                raise CheckpointError(f"RLlib layer {index} is {type(theirs).__name__}, our MLP has {type(mine).__name__}")
    return ours.eval()


@torch.no_grad()
def rllib_outputs(module: nn.Module, algorithm: str, obs: np.ndarray) -> np.ndarray:
    """The module's own Q-values (DQN) or action-distribution logits (PPO), float32 numpy."""
    batch = {"obs": torch.as_tensor(np.asarray(obs, dtype=np.float32))}
    if algorithm == "dqn":
        out = module.compute_q_values(batch)["qf_preds"]
    else:
        out = module.forward_inference(batch)["action_dist_inputs"]
    return out.detach().cpu().float().numpy()


def sample_observations(obs_space, count: int, seed: int) -> np.ndarray:
    """Random observations: uniform within finite bounds, standard normal where unbounded."""
    rng = np.random.default_rng(seed)
    low = np.broadcast_to(np.asarray(obs_space.low, dtype=np.float64), obs_space.shape)
    high = np.broadcast_to(np.asarray(obs_space.high, dtype=np.float64), obs_space.shape)
    finite = np.isfinite(low) & np.isfinite(high) & (high - low < 1e6)
    normal = rng.standard_normal((count, *obs_space.shape)) * 2.0
    uniform = rng.uniform(np.where(finite, low, 0.0), np.where(finite, high, 1.0), (count, *obs_space.shape))
    return np.where(finite, uniform, normal).astype(np.float32)


@torch.no_grad()
def verify_export(module: nn.Module, algorithm: str, ours: nn.Module, obs: np.ndarray,
                  tolerance: float = EXPORT_TOLERANCE, to_rllib=None) -> float:
    """Max abs difference between our network and RLlib's forward; raises if above ``tolerance``.

    ``obs`` are in our network's layout; ``to_rllib`` maps them to RLlib's (identity if None)."""
    expected = rllib_outputs(module, algorithm, obs if to_rllib is None else to_rllib(obs))
    got = ours(torch.as_tensor(obs)).float().numpy()
    if expected.shape != got.shape:
        raise CheckpointError(f"export check failed: RLlib outputs {expected.shape}, ours {got.shape}")
    diff = float(np.max(np.abs(expected - got)))
    if not diff <= tolerance:
        raise CheckpointError(f"export check failed: our network differs from the RLlib {algorithm} module "
                              f"by {diff:.3g} (> {tolerance:g}) on random observations")
    return diff
