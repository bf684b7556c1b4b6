"""The from-scratch baseline on Atari: RLlib DQN on the student's Rusu CNN, exported onto our
ConvNet at every evaluation and scored on whole games against a teacher's model card."""
import pytest
import torch

from kd_system.experiments.scratch import ScratchBudget, train_from_scratch
from kd_system.policies.networks import build_network, cnn_spec, count_parameters
from kd_system.policies.files import PolicySpec, save_policy

pytestmark = pytest.mark.slow


def test_atari_scratch_baseline_trains_rllibs_cnn_and_scores_our_export(tmp_path):
    torch.manual_seed(0)
    network = cnn_spec("nature")
    module = build_network(network, (4, 84, 84), 6)
    card = {"eval_return_mean": 10.0, "random_return_mean": -20.0}  # a stated scale: only the arithmetic matters
    spec = PolicySpec("teacher", "ALE/Pong-v5", (4, 84, 84), "uint8", 6, "logits", network,
                      count_parameters(module), card)
    save_policy(tmp_path / "teacher", spec, module)
    budget = ScratchBudget(max_env_steps=400, max_wall_s=300, eval_every_steps=200, eval_episodes=1)
    result = train_from_scratch("ALE/Pong-v5", cnn_spec("rusu-4"), tmp_path / "teacher", budget)
    assert result["network"]["preset"] == "rusu-4" and result["algorithm"] == "rllib-dqn"
    assert result["hparams"]["lr"] == 1e-4  # the Atari DQN default, not the MLP one
    assert len(result["curve"]) == 2 and result["env_steps_end"] >= 400
    for point in result["curve"]:
        # a whole Pong game (raw rewards, no life-loss ends) normalized on the card's scale
        assert -21 <= point["return_mean"] <= 21
        assert point["normalized_score"] == pytest.approx((point["return_mean"] + 20.0) / 30.0)
    assert result["env_steps_to_threshold"] is None
