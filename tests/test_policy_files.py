import json

import numpy as np
import pytest

from kd_system.errors import CheckpointError
from kd_system.policies.networks import build_network, count_parameters
from kd_system.policies.files import FrozenPolicy, PolicyBundle, PolicySpec, load_bundle, save_policy

NETWORK = {"kind": "mlp", "hidden": [16, 16], "activation": "relu"}


def make_policy(tmp_path, name="policy"):
    module = build_network(NETWORK, (4,), 2)
    spec = PolicySpec("teacher", "CartPole-v1", (4,), "float32", 2, "q", NETWORK, count_parameters(module),
                      {"eval_return_mean": 500.0})
    return save_policy(tmp_path / name, spec, module), module


def test_round_trip_reproduces_outputs(tmp_path):
    path, module = make_policy(tmp_path)
    policy = FrozenPolicy.load(path)
    obs = np.random.default_rng(0).normal(size=(32, 4)).astype(np.float32)
    import torch
    expected = module(torch.from_numpy(obs)).detach().numpy()
    np.testing.assert_allclose(policy.outputs(obs), expected, rtol=1e-6)
    assert policy.num_params == 4 * 16 + 16 + 16 * 16 + 16 + 16 * 2 + 2
    assert policy.spec.model_card["eval_return_mean"] == 500.0


def test_bundle_survives_bytes_round_trip(tmp_path):
    path, _ = make_policy(tmp_path)
    bundle = load_bundle(path)
    clone = PolicyBundle(bundle.spec, bytes(bundle.weights))
    obs = np.ones((3, 4), np.float32)
    np.testing.assert_array_equal(FrozenPolicy.from_bundle(clone).outputs(obs), FrozenPolicy.load(path).outputs(obs))


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        FrozenPolicy.load(tmp_path / "nope")


def test_corrupt_weights(tmp_path):
    path, _ = make_policy(tmp_path)
    (path / "model.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(CheckpointError, match="corrupt"):
        FrozenPolicy.load(path)


def test_corrupt_spec(tmp_path):
    path, _ = make_policy(tmp_path)
    (path / "spec.json").write_text("{ not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        FrozenPolicy.load(path)


def test_weights_that_do_not_match_the_spec(tmp_path):
    path, _ = make_policy(tmp_path)
    spec = json.loads((path / "spec.json").read_text())
    spec["network"]["hidden"] = [32]
    (path / "spec.json").write_text(json.dumps(spec))
    with pytest.raises(CheckpointError, match="does not match the network"):
        FrozenPolicy.load(path)


@pytest.mark.parametrize("field, value, expected", [
    ("num_actions", 3, r"layer layers\.4\.weight has shape \[2, 16\] but the spec's num_actions gives \[3, 16\]"),
    ("obs_shape", [6], r"layer layers\.0\.weight has shape \[16, 4\] but the spec's obs_shape gives \[16, 6\]"),
])
def test_a_mismatch_names_the_layer_and_the_spec_field(tmp_path, field, value, expected):
    path, _ = make_policy(tmp_path)
    spec = json.loads((path / "spec.json").read_text())
    spec[field] = value
    (path / "spec.json").write_text(json.dumps(spec))
    with pytest.raises(CheckpointError, match=expected) as caught:
        FrozenPolicy.load(path)
    assert "\n" not in str(caught.value) and f"fix {field} in spec.json" in str(caught.value)


def test_a_file_given_as_a_checkpoint_points_to_the_importer(tmp_path):
    path, _ = make_policy(tmp_path)
    with pytest.raises(CheckpointError, match="kd-system teacher import"):
        FrozenPolicy.load(path / "model.safetensors")


def test_future_format_version_is_refused(tmp_path):
    path, _ = make_policy(tmp_path)
    spec = json.loads((path / "spec.json").read_text())
    spec["format_version"] = 99
    (path / "spec.json").write_text(json.dumps(spec))
    with pytest.raises(CheckpointError, match="format_version 99"):
        FrozenPolicy.load(path)


def test_an_unknown_spec_field_is_refused_by_name(tmp_path):
    path, _ = make_policy(tmp_path)
    spec = json.loads((path / "spec.json").read_text())
    spec["num_action"] = 2  # misspelt
    (path / "spec.json").write_text(json.dumps(spec))
    with pytest.raises(CheckpointError, match="unknown field 'num_action'"):
        FrozenPolicy.load(path)
