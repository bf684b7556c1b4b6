"""The Pong teacher's SB3 training driver (kd_system/experiments/sb3_teacher.py) in parts: a first
part, a resumed one that goes on from the saved Q-network and counters, a refusal to start over a
training without --resume, and SIGTERM saving a resume point. Real SB3, real ALE Pong."""
from __future__ import annotations

import json
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from tests.chaos import wait_for

pytest.importorskip("stable_baselines3")

TINY = ["--env", "ALE/Pong-v5", "--learning-starts", "300", "--refill-steps", "300", "--save-every", "500", "--eval-every", "1000",
        "--eval-episodes", "1", "--threads", "1"]


def _driver(out, *args: str) -> int:
    from kd_system.experiments.sb3_teacher import main
    return main(["--out", str(out), *TINY, *args])


def test_the_evaluation_scales_frames_once_as_sb3_does():
    """The periodic evaluation's Q-values are SB3's own on [0, 1] pixels: frames go in as uint8 and
    SB3 scales them (scaling them before too would play on near-blank input)."""
    from stable_baselines3 import DQN

    from kd_system.envs.make import make_training_env
    from kd_system.experiments.sb3_teacher import _greedy, _q_values

    env = make_training_env("ALE/Pong-v5")
    model = DQN("CnnPolicy", env, buffer_size=100, learning_starts=10, seed=0, device="cpu")
    obs = np.stack([env.reset(seed=seed)[0] for seed in range(4)] + [env.step(3)[0] for _ in range(12)])
    env.close()
    net = model.q_net
    with torch.no_grad():
        once = net.q_net(net.features_extractor(torch.as_tensor(obs).float() / 255))
        twice = net.q_net(net.features_extractor(torch.as_tensor(obs).float() / 255 / 255))
    assert torch.allclose(_q_values(model, obs), once, atol=1e-6)
    assert not torch.allclose(once, twice, atol=1e-6)  # the check can tell the two apart
    assert np.array_equal(_greedy(model)(obs), model.predict(obs, deterministic=True)[0])


def test_channels_last_changes_the_layout_and_nothing_else():
    """The trainer keeps conv weights and frames in NHWC order for speed. The Q-values, the weights a
    resume point saves, and the Parameters the optimizer steps must stay the very same."""
    from stable_baselines3 import DQN

    from kd_system.envs.make import make_training_env
    from kd_system.experiments.sb3_teacher import _channels_last, _q_values

    env = make_training_env("ALE/Pong-v5")
    model = DQN("CnnPolicy", env, buffer_size=100, learning_starts=10, seed=0, device="cpu")
    obs = np.stack([env.reset(seed=0)[0]] + [env.step(2)[0] for _ in range(7)])
    env.close()
    before = _q_values(model, obs)
    saved = {k: v.clone() for k, v in model.q_net.state_dict().items()}
    stepped = [id(p) for group in model.policy.optimizer.param_groups for p in group["params"]]
    _channels_last(model)
    conv = model.q_net.features_extractor.cnn[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert torch.allclose(_q_values(model, obs), before, atol=1e-5)
    assert torch.allclose(model.q_net_target(torch.as_tensor(obs)), before, atol=1e-5)
    assert [id(p) for p in model.q_net.parameters()] == stepped
    for key, value in model.q_net.state_dict().items():
        assert torch.equal(value.contiguous(), saved[key])


def test_a_resumed_part_refills_its_replay_by_playing_its_network():
    """SB3's warm-up plays uniformly random actions until learning starts. A resumed part refills an
    empty replay, and must fill it with its restored network's (epsilon-greedy) games, not a random
    player's: with random refills the training episodes after each resume fell from about +1 to -15."""
    from kd_system.envs.make import make_training_env
    from kd_system.experiments.sb3_dqn import dqn_classes
    from kd_system.experiments.sb3_teacher import _greedy

    fresh, resumed = dqn_classes()
    env = make_training_env("ALE/Pong-v5")
    obs = np.stack([env.reset(seed=0)[0]] + [env.step(3)[0] for _ in range(8)])
    actions = {}
    for name, dqn in (("fresh", fresh), ("resumed", resumed)):
        model = dqn("CnnPolicy", env, buffer_size=100, learning_starts=10_000, seed=0, device="cpu")
        model.exploration_rate = 0.0  # greedy: what the network plays, told apart from random play
        actions[name] = []
        for state in obs:
            model._last_obs = state[None]
            actions[name] += [int(model._sample_action(model.learning_starts)[0][0]) for _ in range(6)]
        greedy = np.repeat(_greedy(model)(obs), 6)
    env.close()
    assert actions["resumed"] == greedy.tolist()  # its network's choice, every time
    assert len(set(actions["fresh"])) > 1  # SB3's own warm-up: uniformly random


def test_the_epsilon_greedy_value_is_max_at_0_and_the_mean_at_1():
    from kd_system.experiments.sb3_dqn import epsilon_greedy_value

    q = torch.tensor([[1.0, 3.0, 2.0, 2.0], [-1.0, -1.0, 0.0, -2.0]])
    assert torch.equal(epsilon_greedy_value(q, 0.0), torch.tensor([3.0, 0.0]))
    assert torch.allclose(epsilon_greedy_value(q, 1.0), torch.tensor([2.0, -1.0]))
    # 5% of the time a uniformly random action, which is the greedy one a quarter of the time
    assert torch.allclose(epsilon_greedy_value(q, 0.05), torch.tensor([0.95 * 3 + 0.05 * 2, 0.05 * -1.0]))


def test_bootstrapping_on_epsilon_0_is_sb3s_own_update_and_above_0_another():
    """The trainer's own update loop at epsilon 0 steps the very weights SB3's ``train`` does (same
    replay, same draws); at the protocol's 0.05 it bootstraps on lower values and steps elsewhere."""
    from kd_system.envs.make import make_training_env
    from kd_system.experiments.sb3_dqn import dqn_classes
    from kd_system.experiments.sb3_logger import without_sb3_logger

    dqn, _ = dqn_classes()
    model = without_sb3_logger(dqn("CnnPolicy", make_training_env("ALE/Pong-v5"), buffer_size=400, n_steps=3,
                                   learning_starts=10_000, seed=0, device="cpu"))
    model.learn(total_timesteps=300)  # fills the replay; learning has not started
    start = ({k: v.clone() for k, v in model.q_net.state_dict().items()},
             {k: v.clone() for k, v in model.q_net_target.state_dict().items()})

    def stepped(update) -> dict:
        model.q_net.load_state_dict(start[0])
        model.q_net_target.load_state_dict(start[1])
        model.policy.optimizer = model.policy.optimizer_class(model.policy.parameters(), lr=1e-3)
        np.random.seed(1)
        torch.manual_seed(1)
        update()
        return {k: v.clone() for k, v in model.q_net.state_dict().items()}

    sb3 = stepped(lambda: model.train(gradient_steps=3, batch_size=16))
    ours = stepped(lambda: model.train_bootstrapping_on(0.0, 3, 16))
    other = stepped(lambda: model.train_bootstrapping_on(0.05, 3, 16))
    model.env.close()
    assert any(not torch.equal(sb3[k], start[0][k]) for k in sb3)  # the update moved the weights
    assert all(torch.allclose(ours[k], sb3[k], atol=1e-7) for k in sb3)
    assert any(not torch.allclose(other[k], sb3[k], atol=1e-7) for k in sb3)


@pytest.mark.slow
def test_training_resumes_from_its_own_resume_point(tmp_path):
    out = tmp_path / "pong"
    assert _driver(out, "--total-steps", "1000") == 0
    first = json.loads((out / "checkpoint" / "state.json").read_text())
    weights = load_file(str(out / "checkpoint" / "q_net.safetensors"))
    assert first["env_steps"] == 1000 and first["resumes"] == [] and len(first["evals"]) == 1
    assert _driver(out, "--total-steps", "1000") == 2  # a finished part is not overwritten without --resume
    assert first["final_epsilons"] == [[0, 0.01]]
    assert first["learning_rates"] == [[0, 1e-4]]
    assert first["bootstrap_epsilons"] == [[0, 0.0]]
    assert _driver(out, "--total-steps", "2000", "--resume", "--final-epsilon", "0.05", "--learning-rate", "5e-5",
                   "--bootstrap-epsilon", "0.05") == 0
    second = json.loads((out / "checkpoint" / "state.json").read_text())
    assert second["env_steps"] == 2000 and second["resumes"] == [1000]
    assert second["final_epsilons"] == [[0, 0.01], [1000, 0.05]]  # a part that changed it says from where
    assert second["learning_rates"] == [[0, 1e-4], [1000, 5e-5]]
    assert second["bootstrap_epsilons"] == [[0, 0.0], [1000, 0.05]]
    assert _driver(out, "--total-steps", "2500", "--resume") == 0
    third = json.loads((out / "checkpoint" / "state.json").read_text())
    assert third["final_epsilons"] == second["final_epsilons"]  # a plain --resume keeps the last part's
    assert third["learning_rates"] == second["learning_rates"]
    assert third["bootstrap_epsilons"] == second["bootstrap_epsilons"]
    assert third["total_steps"] == 2500 and third["env_steps"] == 2500
    assert _driver(out, "--resume") == 0  # a plain --resume keeps the budget too: this one is spent
    assert json.loads((out / "checkpoint" / "state.json").read_text()) == third  # untouched: no empty part
    assert second["wall_s"] > first["wall_s"] and [e["env_steps"] for e in second["evals"]] == [1000, 2000]
    assert (out / "best.zip").exists()  # what kd-system teacher import reads
    assert set(load_file(str(out / "checkpoint" / "q_net.safetensors"))) == set(weights)
    kinds = {json.loads(line)["kind"] for line in (out / "progress.jsonl").read_text().splitlines()}
    assert "eval" in kinds  # (a random-play Pong game lasts about as long as a part here: episodes may not end)


@pytest.mark.slow
def test_sigterm_saves_a_resume_point_and_exits(tmp_path):
    out = tmp_path / "pong"
    command = [sys.executable, "-m", "kd_system.experiments.sb3_teacher", "--out", str(out), *TINY,
               "--total-steps", "1000000", "--eval-every", "1000000"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert wait_for(lambda: (out / "checkpoint" / "state.json").exists(), 240)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, output[-3000:]
    assert "(signal)" in output and "Traceback" not in output
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["env_steps"] > 500  # saved at the signal, not only at the last interval


def test_the_training_record_describes_the_last_best_evaluation(tmp_path):
    """best.zip is saved at an evaluation that ties or beats every earlier one: the record names the
    last one reaching the best mean, with the parts and evaluations up to it."""
    from kd_system.experiments.sb3_record import RECORD_FILE, training_record
    from kd_system.experiments.sb3_teacher import _args, main
    from kd_system.teachers.imports.training_record import load_training_record

    state = {"wall_s": 900.0, "env_steps": 40_000, "best_eval": -11.0, "resumes": [15_000, 35_000],
             "evals": [{"env_steps": 10_000, "wall_s": 100.0, "mean": -20.0},
                       {"env_steps": 20_000, "wall_s": 300.0, "mean": -11.0},
                       {"env_steps": 30_000, "wall_s": 500.0, "mean": -11.0},
                       {"env_steps": 40_000, "wall_s": 880.0, "mean": -15.0}]}
    args = _args(["--out", str(tmp_path), "--eval-episodes", "8"])
    record = training_record(state, args)
    assert (record["env_steps"], record["wall_s"], record["parts"]) == (30_000, 500.0, 2)
    assert [e["env_steps"] for e in record["evaluations"]] == [10_000, 20_000, 30_000]
    assert "8 games each, epsilon 0.05" in record["evaluation_protocol"]
    assert "epsilon to 0.01 over 250,000 steps, learning" in record["settings"]  # a state from before the option

    assert "Adam 1e-4, batch 32" in record["settings"]
    assert "3-step returns bootstrapping on max Q;" in record["settings"]
    changed = {**state, "final_epsilons": [[0, 0.01], [25_000, 0.05], [35_000, 0.02]],
               "learning_rates": [[0, 1e-4], [20_000, 5e-5], [30_000, 2.5e-5]]}
    settings = training_record(changed, args)["settings"]
    assert "epsilon to 0.01 over 250,000 steps; 0.05 from 25,000 steps, learning" in settings
    assert "Adam 1e-4; 5e-5 from 20,000 steps, batch 32" in settings  # 2.5e-5 came at the best step: none of it

    assert main(["--out", str(tmp_path), "--record"]) == 2  # nothing trained there yet
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / "state.json").write_text(json.dumps(state))
    (tmp_path / "best.zip").write_bytes(b"")
    assert main(["--out", str(tmp_path), "--record"]) == 0
    loaded = load_training_record(tmp_path / RECORD_FILE)  # what teacher import --training reads
    assert loaded.env_steps == 30_000 and loaded.steps_per_s == 60.0


def test_the_settings_text_names_only_the_epsilons_that_trained_the_weights():
    from kd_system.experiments.sb3_record import epsilon_text

    state = {"final_epsilons": [[0, 0.01], [1_000_000, 0.05]]}
    assert epsilon_text(state, 250_000, 1_000_000) == "0.01 over 250,000 steps"  # changed at the best step itself
    assert epsilon_text(state, 250_000, 1_050_000) == "0.01 over 250,000 steps; 0.05 from 1,000,000 steps"
    assert epsilon_text({}, 250_000, 10) == "0.01 over 250,000 steps"  # a state.json from before the option


def test_the_settings_text_names_the_bootstrap_target_of_each_stretch():
    from kd_system.experiments.sb3_record import target_text

    assert target_text({}, 10) == "max Q"  # a state.json from before --bootstrap-epsilon: SB3's own target
    state = {"bootstrap_epsilons": [[0, 0.0], [3_400_000, 0.05]]}
    assert target_text(state, 3_400_000) == "max Q"
    assert target_text(state, 3_450_000) == "max Q; the value of epsilon-greedy play at 0.05 from 3,400,000 steps"


def test_an_epsilon_outside_0_1_or_a_bad_step_size_is_refused_before_anything_is_written(tmp_path, capsys):
    assert _driver(tmp_path / "pong", "--final-epsilon", "1.5") == 2
    assert "--final-epsilon 1.5" in capsys.readouterr().err and not (tmp_path / "pong").exists()
    assert _driver(tmp_path / "pong", "--total-steps", "0") == 2
    assert "--total-steps 0" in capsys.readouterr().err and not (tmp_path / "pong").exists()
    for bad in ("-0.1", "nan", "1.5"):
        assert _driver(tmp_path / "pong", "--bootstrap-epsilon", bad) == 2
        assert f"--bootstrap-epsilon {float(bad)}" in capsys.readouterr().err and not (tmp_path / "pong").exists()
    for bad in ("0", "-0.0001", "nan", "2"):
        assert _driver(tmp_path / "pong", "--learning-rate", bad) == 2
        assert f"--learning-rate {float(bad)}" in capsys.readouterr().err and not (tmp_path / "pong").exists()


def test_each_part_says_from_which_step_its_epsilon_and_learning_rate_held():
    from kd_system.experiments.sb3_record import learning_rates, with_change

    zoo = [[0, 0.01]]
    assert with_change(zoo, 0, None) == zoo and with_change(zoo, 0, 0.05) == [[0, 0.05]]  # a new training
    changed = with_change(zoo, 2_000, 0.05)
    assert changed == [[0, 0.01], [2_000, 0.05]]
    assert with_change(changed, 3_000, None) == changed  # a plain --resume keeps the last part's
    assert with_change(changed, 2_000, 0.02) == [[0, 0.01], [2_000, 0.02]]  # stopped before training: replaced
    assert with_change(changed, 2_000, 0.01) == zoo  # and back to where it was, with no empty stretch
    assert learning_rates({}) == [[0, 1e-4]]  # a state.json from before --learning-rate: the Zoo's
    assert with_change(learning_rates({}), 3_000, 5e-5) == [[0, 1e-4], [3_000, 5e-5]]


def test_epsilon_gap_scores_a_saved_q_network_and_refuses_bad_input(tmp_path, capsys):
    from safetensors.torch import save_file
    from stable_baselines3 import DQN

    from kd_system.envs.make import make_training_env
    from kd_system.experiments.epsilon_gap import main

    env = make_training_env("ALE/Pong-v5")
    model = DQN("CnnPolicy", env, buffer_size=1, seed=0, device="cpu")
    env.close()
    weights = tmp_path / "q_net.safetensors"
    save_file({k: v.contiguous() for k, v in model.q_net.state_dict().items()}, str(weights))
    assert main([str(weights), "--games", "2", "--epsilons", "1.5"]) == 2
    assert "--epsilons 1.5" in capsys.readouterr().err
    (tmp_path / "bad.safetensors").write_bytes(b"not a tensor file")
    assert main([str(tmp_path / "bad.safetensors"), "--games", "2"]) == 2
    assert "bad.safetensors: not the Q-network" in capsys.readouterr().err
    assert main([str(weights), "--games", "2", "--epsilons", "1.0", "--json", str(tmp_path / "gap.json")]) == 0
    scores = json.loads((tmp_path / "gap.json").read_text())["scores"]
    assert [s["epsilon"] for s in scores] == [1.0] and len(scores[0]["returns"]) == 2
    assert -21 <= scores[0]["mean"] <= -15  # a uniformly random player
