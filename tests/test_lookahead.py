"""Lookahead labels: the improved policy's logits by hand, rollouts against a plain hand-written
loop, the copy check, and a collector that stores improved labels in a real redis-server."""
import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from kd_system.actors.collector import Collector, CollectorSettings
from kd_system.config import LearnerConfig, from_dict, resolve_teacher_path
from kd_system.envs.make import make_env
from kd_system.errors import ConfigError
from kd_system.learner.learner import Learner, LearnerTask
from kd_system.actors.lookahead import LookaheadSettings, RolloutLabeller, improved_logits
from kd_system.envs.copying import check_copyable
from kd_system.learner.losses import kl_divergence
from kd_system.policies.files import FrozenPolicy, PolicySpec, load_bundle
from kd_system.launch.preparation import prepare
from kd_system.replay.connection import StoreAddress
from kd_system.replay.table import ReplayTable


@pytest.fixture(scope="module")
def acrobot_teacher() -> FrozenPolicy:
    return FrozenPolicy.load(resolve_teacher_path("shipped:acrobot-v1"))


def test_improved_logits_by_hand():
    # logits teacher at tau 1: log_softmax([1, 2]) = [-1.31326, -0.31326]; (Q - max Q) / 0.1 = [0, -20]
    labels = improved_logits(np.array([[1.0, 2.0]]), np.array([[-10.0, -12.0]]), eta=0.1, teacher_temperature=1.0)
    np.testing.assert_allclose(labels, [[-1.3132617, -20.3132617]], rtol=1e-6)
    assert labels.dtype == np.float32
    # Q teacher at tau 0.01: q [1.00, 1.01] is log_softmax([100, 101]); tied returns leave the teacher's preference
    labels = improved_logits(np.array([[1.00, 1.01]]), np.array([[-5.0, -5.0]]), eta=0.1, teacher_temperature=0.01)
    np.testing.assert_allclose(labels, [[-1.3132617, -0.3132617]], rtol=1e-4)
    # eta sets how much return outweighs the teacher: a gain of 1 at eta 10 is 0.1 nats, not enough here
    soft = improved_logits(np.array([[0.0, 2.0]]), np.array([[-9.0, -10.0]]), eta=10.0, teacher_temperature=1.0)
    assert soft.argmax() == 1
    sharp = improved_logits(np.array([[0.0, 2.0]]), np.array([[-9.0, -10.0]]), eta=0.1, teacher_temperature=1.0)
    assert sharp.argmax() == 0
    # returns in the thousands stay finite logits
    assert np.isfinite(improved_logits(np.zeros((1, 3)), np.array([[0.0, -5e3, 1e4]]), 0.1, 1.0)).all()


def test_copy_check_accepts_python_envs_and_refuses_box2d_and_atari():
    check_copyable("CartPole-v1", "lookahead.enabled")
    check_copyable("Acrobot-v1", "lookahead.enabled")
    with pytest.raises(ConfigError, match=r"tasks\[2\]\.lookahead: LunarLander-v3 does not copy exactly.*set it to false"):
        check_copyable("LunarLander-v3", "tasks[2].lookahead")
    with pytest.raises(ConfigError, match=r"lookahead.enabled: ALE/Pong-v5 runs in ale-py's C\+\+ vector env"):
        check_copyable("ALE/Pong-v5", "lookahead.enabled")


def hand_rollout(env, first_action: int, teacher: FrozenPolicy, horizon: int | None = None) -> tuple[float, int]:
    """Return and length of: first_action, then the greedy teacher, on a copy of env."""
    sim = copy.deepcopy(env)
    obs, total, steps, done = None, 0.0, 0, False
    action = first_action
    while not done and (horizon is None or steps < horizon):
        obs, reward, terminated, truncated, _ = sim.step(action)
        total, steps, done = total + reward, steps + 1, terminated or truncated
        action = int(teacher.greedy_actions(obs[None])[0])
    return total, steps


def test_rollout_returns_match_a_plain_loop_and_leave_the_envs_alone(acrobot_teacher):
    envs = [make_env("Acrobot-v1") for _ in range(2)]
    rng = np.random.default_rng(3)
    for seed, env in enumerate(envs):
        env.reset(seed=seed)
        for _ in range(10 + 7 * seed):
            env.step(int(rng.integers(3)))
    before = [env.unwrapped.state.copy() for env in envs]
    labeller = RolloutLabeller(acrobot_teacher, LookaheadSettings(eta=0.1, teacher_temperature=1.0))
    returns = labeller.rollout_returns(envs)
    expected = [[hand_rollout(env, a, acrobot_teacher) for a in range(3)] for env in envs]
    np.testing.assert_array_equal(returns, [[r for r, _ in row] for row in expected])
    assert labeller.rollout_steps == sum(n for row in expected for _, n in row)
    for env, state in zip(envs, before):
        np.testing.assert_array_equal(env.unwrapped.state, state)

    cut = RolloutLabeller(acrobot_teacher, LookaheadSettings(eta=0.1, teacher_temperature=1.0, horizon_steps=5))
    np.testing.assert_array_equal(cut.rollout_returns(envs), [[hand_rollout(env, a, acrobot_teacher, 5)[0]
                                                                 for a in range(3)] for env in envs])
    assert cut.rollout_steps == 2 * 3 * 5


def test_acting_on_the_labels_scores_at_least_the_teacher_episode_by_episode(acrobot_teacher):
    """The policy improvement theorem in a deterministic env: pi' never loses to the teacher."""
    labeller = RolloutLabeller(acrobot_teacher, LookaheadSettings(eta=0.1, teacher_temperature=1.0))
    for seed in range(3):
        scores = []
        for improved in (False, True):
            env = make_env("Acrobot-v1")
            obs, _ = env.reset(seed=seed)
            total, done = 0.0, False
            while not done:
                out = acrobot_teacher.outputs(obs[None])
                action = int((labeller.labels([env], out) if improved else out).argmax())
                obs, reward, terminated, truncated, _ = env.step(action)
                total, done = total + reward, terminated or truncated
            scores.append(total)
        assert scores[1] >= scores[0], (seed, scores)


def test_collector_stores_improved_labels_and_counts_rollout_steps(redis_url, run_id, acrobot_teacher):
    address = StoreAddress(url=redis_url, run_id=run_id, capacity_states=1024, chunk_states=32)
    settings = CollectorSettings(actor_id=0, env_id="Acrobot-v1", num_envs=2, epsilon=0.0, chunk_states=32,
                                 chunks_per_write=1, torch_threads=1, seed=5,
                                 lookahead=LookaheadSettings(eta=0.1, teacher_temperature=1.0, horizon_steps=20))
    bundle = load_bundle(resolve_teacher_path("shipped:acrobot-v1"))
    collector = Collector(settings, address, bundle)
    try:
        report = collector.collect(1.0)
    finally:
        collector.close()
    store = ReplayTable(address)
    try:
        assert report.states_written >= 32
        assert 0 < report.rollout_steps <= report.env_steps * 3 * 20  # 3 actions, at most 20 steps each
        batch = store.sample(32, np.random.default_rng(0))
        teacher_log_probs = torch.log_softmax(torch.as_tensor(acrobot_teacher.outputs(batch.obs)), -1).numpy()
        gains = batch.teacher_out - teacher_log_probs  # (Q - max Q) / eta: <= 0, 0 at the best action
        assert np.all(gains <= 1e-4) and np.allclose(gains.max(axis=1), 0.0, atol=1e-4)
        np.testing.assert_array_equal(batch.action, batch.teacher_out.argmax(axis=1))  # the improved policy acts
    finally:
        store.clear()
        store.close()


def test_learner_reads_lookahead_labels_at_temperature_one(redis_url, run_id):
    address = StoreAddress(url=redis_url, run_id=run_id, capacity_states=1024, chunk_states=32)
    spec = PolicySpec("student", "Acrobot-v1", (6,), "float32", 3, "logits", {"kind": "mlp", "hidden": [8, 8]})
    learner = Learner(LearnerConfig(temperature=0.01), [LearnerTask(address, spec, "logits", 1.0),
                                                        LearnerTask(address, spec, "logits")])
    try:
        student, labels = torch.randn(5, 3), torch.randn(5, 3)
        assert learner.loss_fns[0](student, labels).item() == pytest.approx(kl_divergence(student, labels, 1.0).item())
        assert learner.loss_fns[1](student, labels).item() == pytest.approx(kl_divergence(student, labels, 0.01).item())
    finally:
        learner.close()


def test_config_turns_lookahead_on_per_task_and_checks_each_env():
    tasks = [{"env": "CartPole-v1", "teacher": "shipped:cartpole-v1"},
             {"env": "Acrobot-v1", "teacher": "shipped:acrobot-v1", "lookahead": True}]
    prepared = prepare(from_dict({"tasks": tasks, "student": {"hidden": [32, 32]}}))
    assert [task.lookahead is not None for task in prepared.tasks] == [False, True]
    assert [task.label_kind for task in prepared.tasks] == ["q", "logits"]
    assert prepared.tasks[1].lookahead.teacher_temperature == 1.0  # the Acrobot teacher outputs logits
    assert prepared.tasks[1].student_spec.model_card["labels"].startswith("lookahead")

    single = prepare(from_dict({"lookahead": {"enabled": True, "eta": 0.5}}))  # the CartPole default
    assert single.tasks[0].lookahead == LookaheadSettings(eta=0.5, teacher_temperature=0.01)
    assert single.tasks[0].student_spec.output_kind == "logits"

    lunar = [*tasks, {"env": "LunarLander-v3", "teacher": "shipped:lunarlander-v3"}]
    with pytest.raises(ConfigError, match=r"tasks\[2\]\.lookahead: LunarLander-v3 does not copy exactly"):
        prepare(from_dict({"tasks": lunar, "lookahead": {"enabled": True}, "student": {"hidden": [32, 32]}}))
    lunar[2]["lookahead"] = False  # the task's own setting wins over the section's default
    prepare(from_dict({"tasks": lunar, "lookahead": {"enabled": True}, "student": {"hidden": [32, 32]}}))


@pytest.mark.parametrize("section, message", [
    ({"eta": 0}, "lookahead.eta must be > 0"),
    ({"horizon_steps": 0}, "lookahead.horizon_steps must be >= 1"),
    ({"enabled": "yes"}, "lookahead.enabled: expected true or false"),
])
def test_bad_lookahead_settings_are_refused(section, message):
    with pytest.raises(ConfigError, match=message):
        from_dict({"lookahead": section})


@pytest.mark.slow
def test_lookahead_run_end_to_end(tmp_path):
    """The shipped config through the real command: Ray actors roll the teacher out, the summary counts it."""
    import json
    import subprocess
    import sys

    runs = tmp_path / "runs"
    command = [sys.executable, "-m", "kd_system.cli", "run", "--config", "acrobot-v1-lookahead",
               "--set", f"head.runs_dir={runs}", "--set", "head.max_updates=300", "--set", "head.snapshot_every_updates=150",
               "--set", "head.eval_episodes=5", "--set", "head.final_eval_episodes=10", "--set", "learner.batch_size=256",
               "--set", "limiter.samples_per_insert=64", "--set", "limiter.min_size_to_sample=512"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    (run_dir,) = runs.iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["labels"].startswith("lookahead (rollout-improved teacher, eta=0.1")
    assert summary["learner_updates"] >= 300
    assert summary["rollout_steps"] > 3 * summary["env_steps"] > 0  # three actions rolled out per labelled state
    spec = json.loads((Path(summary["best_checkpoint"]) / "spec.json").read_text())
    assert spec["model_card"]["labels"] == summary["labels"]
