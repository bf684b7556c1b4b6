"""Linear and tiny students: ``student.hidden: []`` is one Linear layer, prepared, trained, exported
and scored like any student."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from kd_system.config import PACKAGE_DIR, load_config
from kd_system.errors import ConfigError
from kd_system.evaluation.checkpoint_eval import evaluate_checkpoint
from kd_system.export.exporter import export_checkpoint
from kd_system.export.records import ExportRequest
from kd_system.launch.preparation import prepare
from kd_system.learner.losses import build_loss
from kd_system.policies.files import PolicySpec, save_policy
from kd_system.policies.networks import build_network, count_parameters

SHIPPED = {"CartPole-v1": "cartpole-v1", "Acrobot-v1": "acrobot-v1", "LunarLander-v3": "lunarlander-v3"}


@pytest.mark.parametrize("env_id, params", [
    ("CartPole-v1", 4 * 2 + 2),  # 4 observations -> 2 actions: weights 4 x 2, bias 2
    ("Acrobot-v1", 6 * 3 + 3),
    ("LunarLander-v3", 8 * 4 + 4),
])
def test_linear_student_is_one_linear_layer(env_id, params):
    prepared = prepare(load_config(None, [f"env.id={env_id}", f"teacher.checkpoint=shipped:{SHIPPED[env_id]}",
                                          "student.hidden=[]"]))
    spec = prepared.tasks[0].student_spec
    assert spec.network["hidden"] == [] and spec.num_params == prepared.student_params == params
    (layer,) = build_network(spec.network, spec.obs_shape, spec.num_actions).layers
    assert isinstance(layer, nn.Linear)
    assert spec.model_card["param_fraction_of_teacher"] < 0.001


def test_tiny_two_layer_student_counts_by_hand():
    # CartPole [14, 14]: (4*14 + 14) + (14*14 + 14) + (14*2 + 2) = 70 + 210 + 30 = 310, 0.46% of 67,586
    assert prepare(load_config(None, ["student.hidden=[14,14]"])).student_params == 310


def test_a_multi_task_student_still_needs_two_layers():
    with pytest.raises(ConfigError, match="student.hidden needs at least two layers for a multi-task student"):
        load_config("multitask-classic", ["student.hidden=[]"])


def test_a_linear_student_learns_a_linear_teacher():
    torch.manual_seed(0)
    teacher = build_network({"kind": "mlp", "hidden": []}, (4,), 2)
    student = build_network({"kind": "mlp", "hidden": []}, (4,), 2)
    optimizer = torch.optim.Adam(student.parameters(), lr=0.05)
    loss_fn = build_loss("kl", "logits")
    obs = torch.randn(512, 4)
    with torch.no_grad():
        labels = teacher(obs)
    for _ in range(300):
        optimizer.zero_grad()
        loss = loss_fn(student(obs), labels)
        loss.backward()
        optimizer.step()
    assert loss.item() < 1e-3
    assert (student(obs).argmax(1) == labels.argmax(1)).float().mean().item() > 0.98


def test_a_linear_student_exports_to_onnx_and_is_scored(tmp_path):
    torch.manual_seed(1)
    network = {"kind": "mlp", "hidden": [], "activation": "relu"}
    module = build_network(network, (4,), 2)
    teacher = str(PACKAGE_DIR / "teachers" / "cartpole-v1")
    spec = PolicySpec("student", "CartPole-v1", (4,), "float32", 2, "logits", network, count_parameters(module),
                      {"distilled_from": teacher})
    (result,) = export_checkpoint(ExportRequest(save_policy(tmp_path / "linear", spec, module), "onnx",
                                                tmp_path / "linear.onnx"))
    sidecar = json.loads(result.sidecar.read_text())
    assert sidecar["parity"]["max_abs_diff"] <= 1e-4 and sidecar["parity"]["greedy_agreement"] == 1.0
    # kd-system eval's function on the exported file: the student, its teacher and a random policy
    scored = evaluate_checkpoint(str(tmp_path / "linear.onnx"), None, episodes=2, seed=0)
    assert scored["params"] == 10 and scored["agreement_with_source"] == 1.0
    assert scored["teacher"] == teacher and scored["teacher_return_mean"] == 500.0
    assert np.isfinite(scored["normalized_score"])
