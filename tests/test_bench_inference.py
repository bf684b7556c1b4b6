"""`kd-system bench --only inference`: the section's JSON has every engine of teacher and student
with positive figures and ratios that agree with them; MACs match a hand count; selecting only
inference starts no Redis. No timing asserts: rates depend on the machine."""
import json
import math

import numpy as np
import pytest
import torch

from kd_system.bench import command, inference
from kd_system.bench.context import DEFAULT_SECTIONS, BenchContext, BenchOptions, parse_only
from kd_system.bench.inference_engines import CHANNELS_LAST, ENGINES, Budget, engine_names, network_macs
from kd_system.bench.report import render
from kd_system.errors import ConfigError
from kd_system.policies.files import PolicyBundle, PolicySpec
from kd_system.policies.networks import build_network, cnn_spec

TINY = Budget(window_s=0.01, warmup_s=0.005, min_calls=20)
TINY_OBS = (4, 36, 36)


def tiny_cnn(role: str, channels: list[int], fc: int) -> PolicyBundle:
    network = {"kind": "cnn", "channels": channels, "kernels": [8, 4], "strides": [4, 2], "fc": [fc]}
    torch.manual_seed(len(channels) + fc)
    module = build_network(network, TINY_OBS, 4)
    spec = PolicySpec(role, "ALE/Breakout-v5", TINY_OBS, "uint8", 4, "logits", network,
                      sum(p.numel() for p in module.parameters()))
    return PolicyBundle.from_module(spec, module)


@pytest.fixture(scope="module")
def section() -> dict:
    """CartPole as the bench loads it (shipped teacher, env observations), and a tiny CNN pair on
    random frames standing in for the Atari case (named so, to get the targets' figures)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(inference, "CASES", inference.CASES[:1])
        cases = inference.load_cases(None, lambda line: None)
    frames = np.random.default_rng(0).integers(0, 256, size=(80, *TINY_OBS), dtype=np.uint8)
    cases.append(inference.Case("atari", "ALE/Breakout-v5", tiny_cnn("teacher", [16, 16], 64), "tiny teacher",
                                tiny_cnn("student", [4, 8], 16), "random init (seed 0)", frames))
    return inference.measure_cases(cases, TINY, lambda line: None)


def check_engine(figures: dict) -> None:
    for key in ("p50_us", "p99_us", "states_per_s"):
        assert math.isfinite(figures[key]) and figures[key] > 0
    assert figures["p99_us"] >= figures["p50_us"] and figures["bytes"] > 0 and figures["calls"] >= TINY.min_calls


def test_every_engine_of_teacher_and_student_with_ratios(section):
    json.dumps(section)  # the section goes into --json as it is
    assert set(section["cases"]) == {"cartpole", "atari"}
    for case in section["cases"].values():
        base = case["teacher"]["engines"]["torch_eager"]
        for role in ("teacher", "student"):
            assert list(case[role]["engines"]) == list(engine_names(case[role]["network"]))
            assert set(ENGINES) <= set(case[role]["engines"])
            for figures in case[role]["engines"].values():
                check_engine(figures)
        for figures in case["student"]["engines"].values():
            assert figures["states_per_s_vs_teacher_eager"] == pytest.approx(figures["states_per_s"] / base["states_per_s"])
            assert figures["p50_gain_vs_teacher_eager"] == pytest.approx(base["p50_us"] / figures["p50_us"])
        student = case["student"]["engines"]
        assert case["throughput_vs_teacher_eager"] == max(f["states_per_s_vs_teacher_eager"] for f in student.values())
        assert case["p50_gain_vs_teacher_eager"] == max(f["p50_gain_vs_teacher_eager"] for f in student.values())
        assert case["macs_ratio"] == pytest.approx(case["teacher"]["macs"] / case["student"]["macs"])
        # int8 weights are a quarter of fp32 ones; the file keeps some fp32 (biases, scales)
        assert case["teacher"]["engines"]["onnx_int8"]["bytes"] < case["teacher"]["engines"]["onnx_fp32"]["bytes"]
    cartpole = section["cases"]["cartpole"]
    assert cartpole["random_student"] and cartpole["student"]["network"]["kind"] == "mlp"
    assert cartpole["teacher"]["engines"]["torch_eager"]["bytes"] == \
        (inference.resolve_teacher_path("shipped:cartpole-v1") / "model.safetensors").stat().st_size
    assert cartpole["floor"]["p50_us"] > 0 and cartpole["floor"]["states_per_s"] > 0
    assert "floor" not in section["cases"]["atari"]  # a CNN has no numpy floor
    assert CHANNELS_LAST in section["cases"]["atari"]["teacher"]["engines"]  # a layout choice, CNNs only
    assert CHANNELS_LAST not in cartpole["teacher"]["engines"]
    assert section["atari_throughput_vs_teacher_eager"] == section["cases"]["atari"]["throughput_vs_teacher_eager"]
    assert section["atari_p50_gain_vs_teacher_eager"] == section["cases"]["atari"]["p50_gain_vs_teacher_eager"]


def test_macs_counted_by_hand():
    conv1 = 32 * 20 * 20 * 4 * 8 * 8  # 84 -> (84 - 8) // 4 + 1 = 20
    conv2 = 64 * 9 * 9 * 32 * 4 * 4  # 20 -> (20 - 4) // 2 + 1 = 9
    conv3 = 64 * 7 * 7 * 64 * 3 * 3  # 9 -> 7
    linear = 64 * 7 * 7 * 512 + 512 * 4
    assert network_macs(cnn_spec("nature"), (4, 84, 84), 4) == conv1 + conv2 + conv3 + linear == 9_345_024
    assert network_macs({"kind": "mlp", "hidden": [256, 256]}, (4,), 2) == 4 * 256 + 256 * 256 + 256 * 2
    assert network_macs({"kind": "onnx"}, (4,), 2) is None


def test_only_inference_starts_no_redis_and_prints_its_table(section, monkeypatch, capsys):
    assert "inference" not in DEFAULT_SECTIONS and parse_only(None) == DEFAULT_SECTIONS
    assert parse_only("inference,store") == ("store", "inference")

    def no_redis(self):
        raise AssertionError("the inference section needs no Redis")

    monkeypatch.setattr(BenchContext, "start_redis", no_redis)
    monkeypatch.setattr(inference, "run_inference", lambda ctx, log: section)
    results = command.run_bench(BenchOptions(env_id="CartPole-v1", only=("inference",)), log=lambda line: None)
    assert results["inference"] is section
    assert set(results["targets"]) == set(results["meets"]) == {"atari_throughput_vs_teacher_eager",
                                                                 "atari_p50_gain_vs_teacher_eager"}
    table = render(results)
    for text in ("cartpole student states/s", "atari student p50 us", "numpy matmul chain", "onnx_int8",
                 "weights do not change latency"):
        assert text in table


def test_a_student_of_another_env_is_refused():
    with pytest.raises(ConfigError, match="--student .* plays Acrobot-v1"):
        inference.load_cases(str(inference.resolve_teacher_path("shipped:acrobot-v1")), lambda line: None)
