"""The shipped teacher's last step: evaluate the selected weights as shipped, and write them with
their model card (``spec.json`` fields and ``MODEL_CARD.md``).

The markdown must stay byte-identical to the cards already shipped under kd_system/teachers/
(tests/test_shipped_atari_teacher.py regenerates one), so its wording, including the name of the
module that trained them, is frozen text here.
"""
from __future__ import annotations

import datetime
import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from kd_system.envs.protocol import eval_epsilon, quick_eval_max_steps
from kd_system.evaluation.episodes import random_act_fn, run_episodes
from kd_system.policies.files import FrozenPolicy, PolicySpec, save_policy
from kd_system.policies.networks import build_network, count_parameters

if TYPE_CHECKING:  # training.py calls write_teacher: an import at run time would be a loop
    from kd_system.teachers.training import TeacherTrainConfig


def write_teacher(cfg: TeacherTrainConfig, spec: PolicySpec, best: dict, total_steps: int, total_wall: float,
                  resumed_at: list[int] | tuple[int, ...] = ()) -> Path:
    """Evaluate ``best["state"]`` after a round trip through the file format, then save it to ``cfg.out_dir``.
    ``resumed_at``: the env steps at which later parts of the training resumed (``--resume``)."""
    import ray

    out = Path(cfg.out_dir)
    with tempfile.TemporaryDirectory() as tmp:  # round-trip through the file format before evaluating
        net = build_network(spec.network, spec.obs_shape, spec.num_actions)
        net.load_state_dict(best["state"])
        save_policy(tmp, spec, net)
        policy = FrozenPolicy.load(tmp)
    stats = run_episodes(cfg.env_id, policy.greedy_actions, cfg.eval_episodes, cfg.eval_seed)
    rand = run_episodes(cfg.env_id, random_act_fn(spec.num_actions, cfg.eval_seed), cfg.eval_episodes, cfg.eval_seed)
    num_params = count_parameters(policy.module)
    selection_cap = quick_eval_max_steps(cfg.env_id)
    card = {
        "eval_return_mean": round(stats.mean, 3), "eval_return_std": round(stats.std, 3),
        "eval_return_min": float(np.min(stats.returns)), "eval_episodes": cfg.eval_episodes,
        "eval_seed": cfg.eval_seed, "eval_policy": _eval_policy_text(cfg.env_id), "eval_epsilon": eval_epsilon(cfg.env_id),
        "random_return_mean": round(rand.mean, 3), "random_return_std": round(rand.std, 3),
        "train_env_steps": best["steps"], "train_wall_s": round(best["wall"], 1),
        "train_env_steps_total": total_steps, "train_wall_s_total": round(total_wall, 1),
        **({"train_resumed_at": list(resumed_at)} if resumed_at else {}),
        "selected_iteration": best["iteration"], "selection_eval_mean": round(best["full"], 3),
        **({"selection_max_episode_steps": selection_cap} if selection_cap is not None else {}),
        "export_max_abs_diff": best["diff"], "algorithm": cfg.algorithm, "rllib_version": ray.__version__,
        "torch_version": torch.__version__, "network": spec.network, "num_params": num_params,
        **({} if cfg.cnn else {"hidden": list(cfg.hidden)}),
        "weights_bytes": num_params * 4, "hparams": cfg.resolved_hparams(), "seed": cfg.seed,
        "command": cfg.command(), "created": datetime.date.today().isoformat(),
    }
    final = PolicySpec(**{**spec.__dict__, "num_params": num_params, "model_card": card})
    save_policy(out, final, policy.module)
    (out / "MODEL_CARD.md").write_text(markdown(final, card))
    print(f"[teacher {cfg.env_id}] wrote {out}: greedy {stats.mean:.2f} ± {stats.std:.2f} over {cfg.eval_episodes} "
          f"episodes (random {rand.mean:.2f}), {num_params} params", flush=True)
    return out


def _eval_policy_text(env_id: str) -> str:
    epsilon = eval_epsilon(env_id)
    return "greedy argmax of the exported network" + (f", a random action with probability {epsilon:g} "
                                                      "(Mnih et al. 2015)" if epsilon else "")


def _return_label(card: dict) -> str:
    epsilon = card.get("eval_epsilon", 0.0)
    return f"Epsilon-greedy ({epsilon:g}) return" if epsilon else "Greedy return"


def _parts_text(card: dict) -> str:
    resumed = card.get("train_resumed_at") or []
    return f" in {len(resumed) + 1} parts (resumed at {', '.join(f'{s:,}' for s in resumed)} env steps)" if resumed else ""


def _network_text(spec: PolicySpec) -> str:
    net = spec.network
    if net["kind"] == "cnn":
        convs = ", ".join(f"{c}x{k}x{k}/{s}" for c, k, s in zip(net["channels"], net["kernels"], net["strides"]))
        return (f"CNN `{net.get('preset', 'custom')}` on {spec.obs_shape} uint8 frame stacks: conv {convs} "
                f"→ fc {' → '.join(str(h) for h in net['fc'])} → {spec.num_actions}, ReLU")
    return f"MLP {spec.obs_shape} → {' → '.join(str(h) for h in net['hidden'])} → {spec.num_actions}, ReLU"


def markdown(spec: PolicySpec, card: dict) -> str:
    """MODEL_CARD.md for a teacher whose spec.json carries ``card``."""
    kind = "Q-values (DQN, double-Q, n-step, no dueling)" if spec.output_kind == "q" else "policy logits (PPO actor)"
    return f"""# Teacher: {spec.env_id} ({card['algorithm'].upper()})

Trained with RLlib {card['rllib_version']} (new API stack) by `kd_system.teachers.training`, exported to the
kd_system policy format and verified against RLlib's own forward (max abs diff {card['export_max_abs_diff']:.2e}).

| | |
|---|---|
| {_return_label(card)} ({card['eval_episodes']} episodes, seeds {card['eval_seed']}..) | **{card['eval_return_mean']:.2f} ± {card['eval_return_std']:.2f}** (min {card['eval_return_min']:.1f}) |
| Random policy, same seeds | {card['random_return_mean']:.2f} ± {card['random_return_std']:.2f} |
| Network | {_network_text(spec)}; outputs {kind} |
| Parameters | {card['num_params']:,} ({card['weights_bytes'] / 1024:.0f} KiB float32) |
| Env steps to the shipped weights | {card['train_env_steps']:,} ({card['train_wall_s']:.0f} s); run total {card['train_env_steps_total']:,} ({card['train_wall_s_total']:.0f} s){_parts_text(card)} |
| Created | {card['created']} |

The shipped weights are the best greedy snapshot (selected on episodes disjoint from the ones reported above).

Hyper-parameters: `{json.dumps(card['hparams'], sort_keys=True)}`

Reproduce with:

```
{card['command']}
```
"""
