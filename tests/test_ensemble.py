"""Several teachers for one task: the ensemble's labels by hand, its file, the run's checks, and bad
input as one line with exit status 2."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from kd_system.config import load_config
from kd_system.errors import ConfigError
from kd_system.launch.preparation import prepare
from kd_system.learner.losses import build_loss
from kd_system.policies.files import FrozenPolicy, PolicySpec, load_bundle, save_policy
from kd_system.policies.networks import build_network, count_parameters
from kd_system.teachers.ensemble import Member, ensemble_bundle, size_reference
from kd_system.teachers.imports.writing import write_imported

LINEAR = {"kind": "mlp", "hidden": [], "activation": "relu"}


def constant_teacher(out: Path, kind: str, outputs: list[float], env_id: str = "CartPole-v1",
                     obs_dim: int = 4) -> Path:
    """A linear teacher whose outputs are ``outputs`` in every state (zero weights, bias = outputs)."""
    module = build_network(LINEAR, (obs_dim,), len(outputs))
    with torch.no_grad():
        module.layers[0].weight.zero_()
        module.layers[0].bias.copy_(torch.tensor(outputs))
    spec = PolicySpec("teacher", env_id, (obs_dim,), "float32", len(outputs), kind, LINEAR, count_parameters(module))
    return save_policy(out, spec, module)


def members(*paths: Path) -> list[Member]:
    return [Member(str(path), load_bundle(path)) for path in paths]


@pytest.fixture
def two_teachers(tmp_path) -> tuple[Path, Path]:
    # q teacher 0.01 * [ln 4, 0] at tau 0.01: policy [0.8, 0.2]; logits teacher [0, ln 4] at tau 1: [0.2, 0.8]
    return (constant_teacher(tmp_path / "q", "q", [0.01 * math.log(4), 0.0]),
            constant_teacher(tmp_path / "logits", "logits", [0.0, math.log(4)]))


def test_ensemble_labels_by_hand(two_teachers):
    # weights [1, 3] -> [0.25, 0.75]: 0.25 * [0.8, 0.2] + 0.75 * [0.2, 0.8] = [0.2 + 0.15, 0.05 + 0.6] = [0.35, 0.65]
    bundle = ensemble_bundle(members(*two_teachers), [1.0, 3.0], temperature=None)
    labels = FrozenPolicy.from_bundle(bundle).outputs(np.zeros((3, 4), np.float32))
    np.testing.assert_allclose(labels, np.log([[0.35, 0.65]] * 3), rtol=1e-5)
    assert bundle.spec.output_kind == "logits" and bundle.spec.network["temperature"] == 1.0
    assert bundle.spec.network["weights"] == [0.25, 0.75]
    assert [m["temperature"] for m in bundle.spec.network["members"]] == [0.01, 1.0]
    # The learner reads logits at tau 1: its KL on these labels is KL(mean policy || student).
    # Student uniform: 0.35 ln(0.35 / 0.5) + 0.65 ln(0.65 / 0.5) = -0.124838 + 0.170537 = 0.045699
    kl = build_loss("kl", "logits")(torch.zeros(1, 2), torch.from_numpy(labels[:1])).item()
    assert kl == pytest.approx(0.35 * math.log(0.7) + 0.65 * math.log(1.3), rel=1e-5)
    # equal weights: [0.5, 0.5]
    equal = FrozenPolicy.from_bundle(ensemble_bundle(members(*two_teachers), None, None))
    np.testing.assert_allclose(equal.outputs(np.zeros((1, 4), np.float32)), np.log([[0.5, 0.5]]), rtol=1e-5)
    # a zero weight drops a member (log 0 = -inf inside the logsumexp, no NaN): the logits teacher's [0.2, 0.8]
    second = FrozenPolicy.from_bundle(ensemble_bundle(members(*two_teachers), [0.0, 2.0], None))
    np.testing.assert_allclose(second.outputs(np.zeros((1, 4), np.float32)), np.log([[0.2, 0.8]]), rtol=1e-5)


def test_an_explicit_learner_temperature_tempers_every_member_and_the_output(two_teachers):
    # tau 0.5 for both members: p_q = softmax([0.01 ln 4, 0] / 0.5) = softmax([0.02 ln 4, 0]) and
    # p_l = softmax([0, ln 4] / 0.5) = softmax([0, ln 16]) = [1/17, 16/17]. The outputs are 0.5 * log of
    # their mean, so the learner's softmax(outputs / 0.5) is the mean policy itself.
    bundle = ensemble_bundle(members(*two_teachers), None, temperature=0.5)
    labels = torch.from_numpy(FrozenPolicy.from_bundle(bundle).outputs(np.zeros((1, 4), np.float32)))
    p_q = torch.softmax(torch.tensor([0.02 * math.log(4), 0.0]), -1)
    p_l = torch.tensor([1 / 17, 16 / 17])
    torch.testing.assert_close(torch.softmax(labels / 0.5, -1)[0], (p_q + p_l) / 2)
    assert bundle.spec.network["temperature"] == 0.5


def test_the_ensemble_saves_loads_and_counts_its_members(two_teachers, tmp_path):
    bundle = ensemble_bundle(members(*two_teachers), [1.0, 3.0], None)
    write_imported(tmp_path / "ensemble", bundle, force=False)  # what a run does with it
    loaded = FrozenPolicy.load(tmp_path / "ensemble")
    obs = np.random.default_rng(0).normal(size=(4, 4)).astype(np.float32)
    np.testing.assert_array_equal(loaded.outputs(obs), FrozenPolicy.from_bundle(bundle).outputs(obs))
    # two linear teachers of 4 * 2 + 2 = 10 parameters: the network has 20, students are sized against 10
    assert loaded.num_params == bundle.spec.num_params == 20
    assert size_reference(bundle.spec, 20) == 10
    card = (tmp_path / "ensemble" / "MODEL_CARD.md").read_text()
    assert "ensemble of 2" in card and str(two_teachers[1]) in card


def test_members_of_other_envs_or_action_counts_are_refused(two_teachers, tmp_path):
    acrobot = constant_teacher(tmp_path / "acrobot", "logits", [0.0, 0.0, 0.0], "Acrobot-v1", 6)
    with pytest.raises(ConfigError, match=r"teacher.checkpoint\[1\] .*acrobot plays Acrobot-v1 with 3 actions but "
                                          r"teacher.checkpoint\[0\] .* plays CartPole-v1 with 2"):
        ensemble_bundle(members(two_teachers[0], acrobot), None, None)
    three = constant_teacher(tmp_path / "three", "q", [0.0, 0.0, 0.0])  # CartPole-v1, but 3 actions
    with pytest.raises(ConfigError, match=r"CartPole-v1 with 3 actions .* with 2; an ensemble's teachers must play one"):
        ensemble_bundle(members(two_teachers[0], three), None, None)


def test_a_run_with_a_list_prepares_one_ensemble_teacher_sized_by_its_largest_member():
    three = "[shipped:cartpole-v1,shipped:cartpole-v1,shipped:cartpole-v1]"
    prepared = prepare(load_config(None, [f"teacher.checkpoint={three}", "teacher.weights=[1,1,2]"]))
    (task,) = prepared.tasks
    assert task.teacher.spec.network["kind"] == "ensemble" and task.imported  # the run keeps a copy
    assert task.teacher.spec.num_params == 3 * 67_586 and task.teacher_params == prepared.teacher_params == 67_586
    card = task.student_spec.model_card
    assert card["teacher_params"] == 67_586 and card["ensemble_params"] == 3 * 67_586
    assert card["param_fraction_of_teacher"] == pytest.approx(4_610 / 67_586)
    assert len(card["teacher_members"]) == 3 and card["teacher_weights"] == [0.25, 0.25, 0.5]
    # a student within 10% of the sum but not of the largest member is refused, saying which
    with pytest.raises(ConfigError, match=r"student.hidden \[96, 96\] gives 9986 parameters, 14.8% of the "
                                          r"ensemble's largest member's 67586"):
        prepare(load_config(None, [f"teacher.checkpoint={three}", "student.hidden=[96,96]"]))
    # a one-item list is that teacher itself
    (single,) = prepare(load_config(None, ["teacher.checkpoint=[shipped:cartpole-v1]"])).tasks
    assert single.teacher.spec.network["kind"] == "mlp" and not single.imported


def test_a_task_of_a_multi_task_run_may_list_several_teachers(tmp_path):
    config = tmp_path / "two.yaml"
    config.write_text("tasks:\n"
                      "  - {env: CartPole-v1, teacher: [shipped:cartpole-v1, shipped:cartpole-v1]}\n"
                      "  - {env: Acrobot-v1, teacher: shipped:acrobot-v1}\n")
    cartpole, acrobot = prepare(load_config(str(config))).tasks
    assert cartpole.teacher.spec.network["kind"] == "ensemble" and cartpole.teacher.spec.network["weights"] == [0.5, 0.5]
    assert acrobot.teacher.spec.network["kind"] == "mlp"
    config.write_text("tasks:\n  - {env: CartPole-v1, teacher: shipped:cartpole-v1}\n  - {env: Acrobot-v1, teacher: []}\n")
    with pytest.raises(ConfigError, match=r"tasks\[1\] needs both env .* or a non-empty list of them"):
        load_config(str(config))


def kd(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kd_system.cli", *args], capture_output=True, text=True, timeout=120)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("kd-system: error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


@pytest.mark.parametrize("settings, fragments", [
    (["teacher.checkpoint=[]"], ["teacher.checkpoint is an empty list", "--set teacher.checkpoint=[A,B]"]),
    (["teacher.checkpoint=[shipped:cartpole-v1,shipped:cartpole-v1]", "teacher.weights=[1,2,3]"],
     ["teacher.weights has 3 entries but teacher.checkpoint lists 2", "one weight per checkpoint"]),
    (["teacher.checkpoint=[shipped:cartpole-v1,shipped:cartpole-v1]", "teacher.weights=[1,-1]"],
     ["teacher.weights [1.0, -1.0] must be finite and non-negative"]),
    (["learner.loss=kl+0.1*infomax"], ["learner.loss", "unknown loss 'infomax'", "mi, adv"]),
])
def test_bad_ensemble_and_loss_settings_are_one_line(tmp_path, settings, fragments):
    args = [item for setting in settings for item in ("--set", setting)]
    assert_one_line_error(kd("run", *args, "--set", f"head.runs_dir={tmp_path}"), *fragments)
    assert not any(tmp_path.iterdir())


def test_an_ensemble_across_envs_is_one_line(tmp_path):
    runs = tmp_path / "runs"
    result = kd("run", "--set", "teacher.checkpoint=[shipped:cartpole-v1,shipped:acrobot-v1]",
                "--set", f"head.runs_dir={runs}")
    assert_one_line_error(result, "teacher.checkpoint[1]", "plays Acrobot-v1 with 3 actions",
                          "list only teachers of CartPole-v1")
    assert not runs.exists() or not any(runs.iterdir())


@pytest.mark.slow
def test_a_run_distils_an_ensemble_of_the_shipped_teacher(tmp_path):
    runs = tmp_path / "runs"
    result = subprocess.run(
        [sys.executable, "-m", "kd_system.cli", "run", "--set",
         "teacher.checkpoint=[shipped:cartpole-v1,shipped:cartpole-v1,shipped:cartpole-v1]",
         "--set", f"head.runs_dir={runs}", "--set", "head.max_wall_s=40", "--set", "head.final_eval_episodes=10"],
        capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = [p for p in runs.iterdir() if p.is_dir()]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["normalized_score"] >= 0.9, summary
    assert summary["teacher_params"] == 67_586  # the size reference: the largest member
    student = json.loads((Path(summary["best_checkpoint"]) / "spec.json").read_text())
    card = student["model_card"]
    assert card["distilled_from"] == str(run_dir / "teacher") and len(card["teacher_members"]) == 3
    assert json.loads((run_dir / "teacher" / "spec.json").read_text())["network"]["kind"] == "ensemble"
    scored = subprocess.run([sys.executable, "-m", "kd_system.cli", "eval", summary["best_checkpoint"],
                             "--episodes", "3"], capture_output=True, text=True, timeout=300)
    assert scored.returncode == 0, scored.stderr[-3000:]
    assert json.loads(scored.stdout)["teacher"] == str(run_dir / "teacher")
