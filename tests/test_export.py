"""``kd-system export``: ONNX (fp32, int8) and TorchScript files of tiny students, their sidecars,
the loader that runs them again, and every refusal leaving nothing behind."""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from kd_system.errors import CheckpointError, ConfigError
from kd_system.export import exporter as exporter_module
from kd_system.export.cli import register_cli
from kd_system.export.exporter import export_checkpoint
from kd_system.export.loading import is_exported, load_exported, sidecar_of
from kd_system.export.parity import held_out_states
from kd_system.export.records import ExportRequest
from kd_system.policies.files import FrozenPolicy, PolicySpec, load_policy, save_policy
from kd_system.policies.networks import build_network, count_parameters

CARTPOLE, ACROBOT, PONG = "CartPole-v1", "Acrobot-v1", "ALE/Pong-v5"
MLP = {"kind": "mlp", "hidden": [32, 32], "activation": "relu"}
TINY_CNN = {"kind": "cnn", "channels": [4, 8], "kernels": [8, 4], "strides": [4, 2], "fc": [32], "activation": "relu"}


def _save(path: Path, role: str, env_id: str, obs_shape: tuple[int, ...], num_actions: int, kind: str,
          network: dict, card: dict | None = None, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    module = build_network(network, obs_shape, num_actions)
    dtype = "uint8" if network["kind"] == "cnn" else "float32"
    spec = PolicySpec(role, env_id, obs_shape, dtype, num_actions, kind, network, count_parameters(module), card or {})
    return save_policy(path, spec, module)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> dict[str, Path]:
    """Tiny teachers and students: an MLP for CartPole, CNNs for Pong, a two-task snapshot."""
    root = tmp_path_factory.mktemp("zoo")
    mlp_teacher = _save(root / "cartpole-teacher", "teacher", CARTPOLE, (4,), 2, "q", MLP, seed=1)
    cnn_teacher = _save(root / "pong-teacher", "teacher", PONG, (4, 84, 84), 6, "logits", TINY_CNN, seed=2)
    snapshot = root / "multi" / "update-000000010"
    _save(snapshot / "cartpole", "student", CARTPOLE, (4,), 2, "logits", MLP, {"distilled_from": str(mlp_teacher)}, 5)
    _save(snapshot / "acrobot", "student", ACROBOT, (6,), 3, "logits", MLP, seed=6)
    (snapshot / "counters.json").write_text(json.dumps({"tasks": ["cartpole", "acrobot"], "updates": 10}))
    return {
        "mlp": _save(root / "mlp-student", "student", CARTPOLE, (4,), 2, "q", MLP,
                     {"distilled_from": str(mlp_teacher)}, seed=3),
        "cnn": _save(root / "cnn-student", "student", PONG, (4, 84, 84), 6, "logits", TINY_CNN,
                     {"distilled_from": str(cnn_teacher)}, seed=4),
        "cnn_orphan": _save(root / "cnn-orphan", "student", PONG, (4, 84, 84), 6, "logits", TINY_CNN, seed=7),
        "multi": snapshot,
    }


def _export(checkpoint: Path, out: Path, fmt: str = "onnx", **options) -> dict:
    results = export_checkpoint(ExportRequest(checkpoint, fmt, out, **options))
    assert [r.path for r in results] == [out]
    return json.loads((out.parent / (out.name + ".json")).read_text())


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_fp32_onnx_matches_the_checkpoint_and_its_sidecar_says_so(zoo, tmp_path, kind):
    out = tmp_path / "student.onnx"
    sidecar = _export(zoo[kind], out)
    spec, module = load_policy(zoo[kind])
    pixels = kind == "cnn"
    assert sidecar["parity"]["max_abs_diff"] <= 1e-4 and sidecar["parity"]["greedy_agreement"] == 1.0
    assert sidecar["parity"]["states"] == 1000 and sidecar["parity"]["seed"] == 12345
    assert sidecar["parity"]["max_abs_output"] > 0.0
    assert sidecar["input"] == {"name": "obs", "dtype": "uint8" if pixels else "float32", "shape": [-1, *spec.obs_shape],
                                "layout": "chw, oldest frame first" if pixels else "vector", "preprocessing": "x/255 inside the graph" if pixels else "none"}
    assert sidecar["output"]["name"] == spec.output_kind and sidecar["precision"] == "fp32"
    assert sidecar["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert sidecar["spec"] == spec.to_json() and sidecar["teacher"] == spec.model_card["distilled_from"]
    assert sidecar["source_checkpoint"] == str(zoo[kind].resolve()) and sidecar["opset"] >= 17
    assert set(sidecar["versions"]) >= {"torch", "onnxruntime"} and sidecar["calibration"] is None
    assert (sidecar["parity"]["kl_mean"] is not None) == (spec.output_kind == "logits")
    model = onnx.load(str(out))
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    session = _session(out)
    (feed,), (fetch,) = session.get_inputs(), session.get_outputs()
    assert (feed.name, fetch.name) == ("obs", spec.output_kind)
    assert feed.type == ("tensor(uint8)" if pixels else "tensor(float)") and not isinstance(feed.shape[0], int)
    states = held_out_states(spec.env_id)[:5]
    for batch in (1, 5):  # the batch dimension is dynamic
        got = session.run(None, {"obs": states[:batch]})[0]
        want = module(torch.as_tensor(states[:batch].copy())).detach().numpy()
        np.testing.assert_allclose(got, want, atol=1e-4)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_torchscript_matches_the_checkpoint(zoo, tmp_path, kind):
    out = tmp_path / "student.pt"
    sidecar = _export(zoo[kind], out, "torchscript")
    assert sidecar["parity"]["max_abs_diff"] <= 1e-4 and sidecar["parity"]["greedy_agreement"] == 1.0
    assert sidecar["file_format"] == "torchscript" and "freeze" in sidecar["exporter"] and sidecar["opset"] is None
    _, module = load_policy(zoo[kind])
    states = torch.as_tensor(held_out_states(sidecar["spec"]["env_id"])[:4].copy())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.load(str(out))
    want = module(states).detach()
    torch.testing.assert_close(scripted(states), want, atol=1e-4, rtol=0)
    if kind == "cnn":  # ConvNet casts, so float frames work too
        torch.testing.assert_close(scripted(states.float()), want, atol=1e-4, rtol=0)


def test_load_exported_runs_the_file_as_the_session_does(zoo, tmp_path):
    out = tmp_path / "student.onnx"
    _export(zoo["cnn"], out)
    assert is_exported(out) and not is_exported(zoo["cnn"])
    bundle = load_exported(out)
    assert bundle.spec.network == {"kind": "onnx", "input_layout": "chw", "input_scale": 1.0, "input_dtype": "uint8"}
    assert bundle.spec.role == "student" and bundle.weights == out.read_bytes()
    policy = FrozenPolicy.from_bundle(bundle)
    states = held_out_states(PONG)[:16]
    np.testing.assert_array_equal(policy.outputs(states), _session(out).run(None, {"obs": states})[0])
    teacher = sidecar_of(out)["teacher"]
    assert policy.spec.model_card["distilled_from"] == teacher and Path(teacher).is_dir()


def test_load_exported_torchscript(zoo, tmp_path):
    out = tmp_path / "student.pt"
    _export(zoo["mlp"], out, "torchscript")
    policy = FrozenPolicy.from_bundle(load_exported(out))
    states = held_out_states(CARTPOLE)[:8]
    np.testing.assert_allclose(policy.outputs(states), FrozenPolicy.load(zoo["mlp"]).outputs(states), atol=1e-5)


def test_int8_mlp_is_quantized_dynamically(zoo, tmp_path):
    out = tmp_path / "student.int8.onnx"
    sidecar = _export(zoo["mlp"], out, int8=True)
    assert sidecar["precision"] == "int8" and sidecar["quantization"]["method"] == "dynamic"
    assert sidecar["calibration"] is None and sidecar["spec"]["output_kind"] == "q"
    assert 0.9 <= sidecar["parity"]["greedy_agreement"] <= 1.0 and sidecar["parity"]["max_abs_diff"] >= 0.0
    assert "MatMulInteger" in {node.op_type for node in onnx.load(str(out)).graph.node}


def test_int8_cnn_is_quantized_statically_on_teacher_rollouts(zoo, tmp_path):
    out = tmp_path / "student.int8.onnx"
    sidecar = _export(zoo["cnn"], out, int8=True, calibration="teacher", calibration_states=64)
    teacher = json.loads((zoo["cnn"] / "spec.json").read_text())["model_card"]["distilled_from"]
    assert sidecar["quantization"]["method"] == "static" and sidecar["quantization"]["format"] == "QDQ"
    assert sidecar["calibration"]["kind"] == "teacher" and sidecar["calibration"]["teacher"] == teacher
    assert sidecar["calibration"]["count"] == 64 and sidecar["calibration"]["env_id"] == PONG
    assert sidecar["calibration"]["seed"] != sidecar["parity"]["seed"]
    assert 0.0 <= sidecar["parity"]["greedy_agreement"] <= 1.0 and sidecar["parity"]["kl_mean"] >= 0.0
    ops = {node.op_type for node in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert sidecar["input"]["dtype"] == "uint8"
    assert FrozenPolicy.from_bundle(load_exported(out)).outputs(held_out_states(PONG)[:3]).shape == (3, 6)


def test_multi_task_snapshot_writes_one_file_per_task(zoo, tmp_path):
    out = tmp_path / "student.onnx"
    results = export_checkpoint(ExportRequest(zoo["multi"], "onnx", out))
    expected = [tmp_path / "student.cartpole.onnx", tmp_path / "student.acrobot.onnx"]
    assert [r.path for r in results] == expected and not out.exists()
    for path, task, env_id, width in zip(expected, ["cartpole", "acrobot"], [CARTPOLE, ACROBOT], [4, 6]):
        sidecar = sidecar_of(path)
        assert (sidecar["task"], sidecar["spec"]["env_id"], sidecar["input"]["shape"]) == (task, env_id, [-1, width])
        assert sidecar["parity"]["greedy_agreement"] == 1.0
    assert sidecar_of(expected[1])["teacher"] is None


def test_cli_registration_exports(zoo, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers(dest="command"))
    out = tmp_path / "cli.pt"
    args = parser.parse_args(["export", str(zoo["mlp"]), "--format", "torchscript", "--out", str(out)])
    assert args.func(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report[0]["file"] == str(out) and report[0]["greedy_agreement"] == 1.0
    assert "one file per task" in parser._subparsers._group_actions[0].choices["export"].description


def _nothing_left(folder: Path, before: set[str]) -> None:
    assert {p.name for p in folder.iterdir()} == before


@pytest.mark.parametrize("change, error, match", [
    ({"checkpoint": "missing"}, CheckpointError, "does not exist"),
    ({"fmt": "tflite"}, ConfigError, "--format 'tflite' is unknown"),
    ({"int8": True, "fmt": "torchscript"}, ConfigError, "ONNX only"),
    ({"int8": True, "calibration": "store"}, ConfigError, "--calibration store"),
    ({"int8": True, "checkpoint": "cnn_orphan"}, ConfigError, "records no teacher"),
    ({"out": "no-such-folder/student.onnx"}, ConfigError, "does not exist"),
    ({"out": "a-file/student.onnx"}, ConfigError, "does not exist"),
])
def test_refusals_write_nothing(zoo, tmp_path, change, error, match):
    (tmp_path / "a-file").write_text("not a folder")
    before = {p.name for p in tmp_path.iterdir()}
    name = change.get("checkpoint", "cnn")
    checkpoint = zoo[name] if name in zoo else tmp_path / name
    request = ExportRequest(checkpoint, change.get("fmt", "onnx"), tmp_path / change.get("out", "student.onnx"),
                            change.get("int8", False), change.get("calibration"))
    with pytest.raises(error, match=match):
        export_checkpoint(request)
    _nothing_left(tmp_path, before)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_is_refused(zoo, tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(ConfigError, match="cannot write in"):
            export_checkpoint(ExportRequest(zoo["mlp"], "onnx", folder / "student.onnx"))
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o755)


def test_existing_out_needs_force(zoo, tmp_path):
    out = tmp_path / "student.onnx"
    out.write_bytes(b"old")
    with pytest.raises(ConfigError, match="already exists; pass --force"):
        export_checkpoint(ExportRequest(zoo["mlp"], "onnx", out))
    assert out.read_bytes() == b"old" and {p.name for p in tmp_path.iterdir()} == {"student.onnx"}
    export_checkpoint(ExportRequest(zoo["mlp"], "onnx", out, force=True))
    assert sidecar_of(out)["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()


def test_parity_failure_refuses_and_writes_nothing(zoo, tmp_path, monkeypatch):
    real = exporter_module.to_onnx

    def perturbed(module, spec, source):
        wrong = build_network(spec.network, spec.obs_shape, spec.num_actions)  # other weights
        return real(wrong, spec, source)

    monkeypatch.setattr(exporter_module, "to_onnx", perturbed)
    with pytest.raises(CheckpointError, match="does not match it on 1000 held-out states"):
        export_checkpoint(ExportRequest(zoo["mlp"], "onnx", tmp_path / "student.onnx"))
    assert list(tmp_path.iterdir()) == []


def test_opaque_teacher_is_refused(tmp_path):
    net = torch.nn.Linear(4, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(2, 4),), str(tmp_path / "t.onnx"), dynamo=False, input_names=["obs"],
                          dynamic_axes={"obs": {0: "batch"}})
    folder = tmp_path / "opaque"
    folder.mkdir()
    (folder / "model.onnx").write_bytes((tmp_path / "t.onnx").read_bytes())
    network = {"kind": "onnx", "input_layout": "chw", "input_scale": 1.0, "input_dtype": "float32"}
    spec = PolicySpec("teacher", CARTPOLE, (4,), "float32", 2, "q", network)
    (folder / "spec.json").write_text(json.dumps(spec.to_json()))
    with pytest.raises(CheckpointError, match="opaque onnx teacher"):
        export_checkpoint(ExportRequest(folder, "onnx", tmp_path / "x.onnx"))
    assert not (tmp_path / "x.onnx").exists()


def test_load_exported_refuses_corrupt_foreign_and_orphan_files(zoo, tmp_path):
    out = tmp_path / "student.onnx"
    _export(zoo["mlp"], out)
    out.write_bytes(out.read_bytes()[:100])  # truncated
    with pytest.raises(CheckpointError, match="does not match the sha256"):
        load_exported(out)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not an onnx model")
    sidecar = sidecar_of(out) | {"sha256": hashlib.sha256(b"not an onnx model").hexdigest()}
    (tmp_path / "garbage.onnx.json").write_text(json.dumps(sidecar))
    with pytest.raises(CheckpointError, match="not an ONNX model"):
        load_exported(garbage)
    orphan = tmp_path / "orphan.onnx"
    orphan.write_bytes(b"x")
    with pytest.raises(CheckpointError, match="orphan.onnx.json is missing"):
        load_exported(orphan)
