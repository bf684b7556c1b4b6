"""RLlib glue for CNN teachers (pixel frame stacks, i.e. Atari): the training env in RLlib's image
layout, the CNN model config, and the export of RLlib's CNN module onto our ``ConvNet``
(``networks.cnn_spec``).

RLlib's CNN encoder takes channels-last float images and flattens its last conv output in
(height, width, channels) order; our ``ConvNet`` takes channels-first pixel stacks (0..255) and
flattens in (channels, height, width) order. So the training env hands RLlib ``obs / 255``
transposed to (84, 84, 4), the conv weights copy over unchanged (RLlib permutes to channels-first
before its convs), and the first fully connected layer's input columns are permuted.
"""
from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from kd_system.envs.make import make_training_env
from kd_system.errors import CheckpointError
from kd_system.policies.networks import ConvNet, build_network

RLLIB_ENV_NAME = "kd_system_atari_teacher_training"
# PPO on Atari as in Schulman et al. 2017 (Table 5) / the common CleanRL settings: 8 envs x 128 steps
# per batch, 4 epochs of 256-state minibatches, clip 0.1, lr 2.5e-4, entropy 0.01. DQN: Mnih et
# al. 2015 scaled to a small budget (replay 100k not 1M, target sync every 8k steps, epsilon to 0.01
# over 250k steps) with Adam at 1e-4 and 3-step returns. Neither was tuned here.
ATARI_DEFAULTS: dict[str, dict[str, Any]] = {
    "dqn": dict(lr=1e-4, gamma=0.99, train_batch_size=32, grad_clip=10.0, num_envs_per_runner=1,
                rollout_fragment_length=4, n_step=3, buffer_size=100_000, prioritized=0, target_update_freq=8000,
                learning_starts=20_000, epsilon_steps=250_000, epsilon_final=0.01, steps_per_iter=4000),
    "ppo": dict(lr=2.5e-4, gamma=0.99, train_batch_size=1024, grad_clip=0.5, num_envs_per_runner=8,
                lambda_=0.95, entropy_coeff=0.01, clip_param=0.1, num_epochs=4,
                minibatch_size=256, vf_loss_coeff=0.5, vf_clip_param=1e5),
}


def to_rllib_obs(stacks: np.ndarray) -> np.ndarray:
    """(..., 4, 84, 84) uint8 pixel stacks -> (..., 84, 84, 4) float32 in [0, 1]."""
    return np.moveaxis(np.asarray(stacks, dtype=np.float32) / 255.0, -3, -1)


class RllibAtariEnv(gym.Env):
    """The env's teacher-training version (envs.make_training_env: for Atari, life loss ends the
    episode and rewards are clipped; frames as the actors see them), in RLlib's image layout."""

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, env_config: dict | None = None):
        env_id = str((env_config or {})["env_id"])
        self._env = make_training_env(env_id)
        stack = self._env.observation_space.shape
        self.observation_space = gym.spaces.Box(0.0, 1.0, (stack[1], stack[2], stack[0]), np.float32)
        self.action_space = self._env.action_space

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        obs, info = self._env.reset(seed=seed)
        return to_rllib_obs(obs), info

    def step(self, action):
        obs, reward, terminated, truncated, info = self._env.step(action)
        return to_rllib_obs(obs), reward, terminated, truncated, info

    def close(self):
        self._env.close()


def register_training_env() -> str:
    from ray.tune.registry import register_env
    register_env(RLLIB_ENV_NAME, lambda env_config: RllibAtariEnv(env_config))
    return RLLIB_ENV_NAME


def cnn_model_config(network: dict[str, Any]) -> dict[str, Any]:
    """RLlib model config whose policy path is exactly ``network`` (a full ``cnn_spec``): valid
    padding like ours, ReLU everywhere, the fc layers as the head, one trunk for policy and value."""
    filters = [[int(c), int(k), int(s), "valid"]
               for c, k, s in zip(network["channels"], network["kernels"], network["strides"])]
    return {"conv_filters": filters, "conv_activation": network.get("activation", "relu"),
            "head_fcnet_hiddens": [int(h) for h in network["fc"]],
            "head_fcnet_activation": network.get("activation", "relu"), "vf_share_layers": True}


def _cnn_layers(encoder: nn.Module, what: str) -> list[nn.Module]:
    net = getattr(encoder, "net", None)
    cnn = getattr(net[0], "cnn", None) if isinstance(net, nn.Sequential) and len(net) else None
    if not isinstance(cnn, nn.Sequential):
        raise CheckpointError(f"cannot export {what}: expected RLlib's CNN encoder (net[0].cnn), "
                              f"got {type(encoder).__name__}")
    return [layer for layer in cnn if not isinstance(layer, nn.ZeroPad2d)]


def _head_layers(head: nn.Module, what: str) -> list[nn.Module]:
    mlp = getattr(getattr(head, "net", None), "mlp", None)
    if not isinstance(mlp, nn.Sequential):
        raise CheckpointError(f"cannot export {what}: expected an RLlib MLP head (net.mlp), got {type(head).__name__}")
    return list(mlp)


def policy_path(module: nn.Module, algorithm: str) -> tuple[list[nn.Module], list[nn.Module]]:
    """(conv layers with activations, head layers) from frames to Q-values or logits."""
    if algorithm == "dqn":
        if getattr(module, "uses_dueling", False) or getattr(module, "num_atoms", 1) != 1:
            raise CheckpointError("cannot export a dueling or distributional DQN module; train with dueling=False, num_atoms=1")
        return _cnn_layers(module.encoder, "DQN encoder"), _head_layers(module.af, "DQN Q head")
    if algorithm == "ppo":
        wrapper = module.encoder
        actor = getattr(wrapper, "actor_encoder", None) or getattr(wrapper, "encoder", None)
        if actor is None:
            raise CheckpointError(f"cannot export PPO encoder of type {type(wrapper).__name__}")
        return _cnn_layers(actor, "PPO encoder"), _head_layers(module.pi, "PPO policy head")
    raise CheckpointError(f"cannot export algorithm {algorithm!r}; use dqn or ppo")


def export_cnn(module: nn.Module, algorithm: str, network: dict[str, Any], obs_shape: tuple[int, ...],
               num_actions: int) -> ConvNet:
    """Copy RLlib's CNN policy path into a fresh ``ConvNet`` built from ``network``."""
    convs, head = policy_path(module, algorithm)
    ours = build_network(network, obs_shape, num_actions)
    mine = list(ours.layers)
    flatten_at = next(i for i, layer in enumerate(mine) if isinstance(layer, nn.Flatten))
    if len(convs) != flatten_at or len(head) != len(mine) - flatten_at - 1:
        raise CheckpointError(f"RLlib {algorithm} CNN has {len(convs)} conv and {len(head)} head layers, our network "
                              f"{flatten_at} and {len(mine) - flatten_at - 1}: check the network preset")
    with torch.no_grad():
        probe = torch.zeros(1, *obs_shape)
        conv_out = nn.Sequential(*mine[:flatten_at])(probe).shape[1:]  # (channels, height, width)
        for index, (theirs, layer) in enumerate(zip(convs + head, mine[:flatten_at] + mine[flatten_at + 1:])):
            if isinstance(layer, (nn.Conv2d, nn.Linear)):
                if type(theirs) is not type(layer) or theirs.weight.shape != layer.weight.shape or theirs.bias is None:
                    raise CheckpointError(f"RLlib layer {index} ({theirs}) does not match our {layer}")
                weight = theirs.weight.detach().cpu()
                if layer is mine[flatten_at + 1]:  # first fc: RLlib's inputs are (h, w, c)-ordered
                    channels, height, width = conv_out
                    weight = weight.reshape(-1, height, width, channels).permute(0, 3, 1, 2).reshape(weight.shape)
                layer.weight.copy_(weight)
                layer.bias.copy_(theirs.bias.detach().cpu())
            elif type(theirs) is not type(layer):
                raise CheckpointError(f"RLlib layer {index} is {type(theirs).__name__}, ours is {type(layer).__name__}")
    return ours.eval()
