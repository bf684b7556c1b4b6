"""The shipped Atari teacher is what its model card says: a Nature CNN trained by the project's
own command, whose card's score is reproduced here by replaying the card's evaluation."""
import json

import pytest
import torch

from kd_system.config import PACKAGE_DIR, load_config
from kd_system.evaluation.episodes import random_act_fn, run_episodes
from kd_system.policies.networks import count_parameters
from kd_system.policies.files import FrozenPolicy
from kd_system.teachers.card import markdown as _markdown

TEACHER_DIR = PACKAGE_DIR / "teachers" / "breakout-v5"


def test_breakout_teacher_is_a_nature_cnn_with_an_honest_card():
    policy = FrozenPolicy.load(TEACHER_DIR)
    spec, card = policy.spec, policy.spec.model_card
    assert spec.env_id == "ALE/Breakout-v5" and spec.output_kind == "logits" and spec.obs_dtype == "uint8"
    assert spec.network["preset"] == "nature" and count_parameters(policy.module) == spec.num_params == 1_686_180
    assert card["command"].startswith("kd-system teacher train --env ALE/Breakout-v5 --algo ppo")
    assert card["eval_return_mean"] > card["random_return_mean"] + 5  # clearly better than random play
    markdown = (TEACHER_DIR / "MODEL_CARD.md").read_text()
    assert f"{card['eval_return_mean']:.2f}" in markdown and "Reproduce with" in markdown
    assert card["eval_epsilon"] == 0.05  # Atari games are scored epsilon-greedy (evaluation.eval_epsilon)
    assert markdown.startswith(_markdown(spec, card).rstrip())  # the generated card, plus how it was made
    assert load_config("breakout-v5").teacher.checkpoint == "shipped:breakout-v5"
    assert (TEACHER_DIR / "model.safetensors").stat().st_size < 8 * 2**20


@pytest.mark.slow
def test_breakout_teacher_card_score_replays_exactly():
    torch.set_num_threads(2)  # as the card's evaluation ran (--torch-threads 2)
    policy = FrozenPolicy.load(TEACHER_DIR)
    card = policy.spec.model_card
    stats = run_episodes(policy.spec.env_id, policy.greedy_actions, card["eval_episodes"], card["eval_seed"])
    # Same seeds, same frames: the same games. Another CPU's kernels could flip a near-tie argmax
    # somewhere, so allow 2% of the teacher's margin over random rather than demanding every bit.
    margin = card["eval_return_mean"] - card["random_return_mean"]
    assert stats.mean == pytest.approx(card["eval_return_mean"], abs=0.02 * margin)
    rand = run_episodes(policy.spec.env_id, random_act_fn(policy.spec.num_actions, card["eval_seed"]),
                        card["eval_episodes"], card["eval_seed"])
    assert round(rand.mean, 3) == card["random_return_mean"]
    assert json.loads((TEACHER_DIR / "spec.json").read_text())["model_card"] == card
