"""The inference section's parts: one policy built in four engines, each behind the call the
actors use (``FrozenPolicy.outputs``: numpy observations in, numpy outputs out), so every engine
pays the same conversions; the timing of one engine (batch-1 percentiles, batch-64 states/s);
the numpy floor of an MLP; and multiply-adds counted from a network spec."""
from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from torch import nn

from kd_system.bench.timing import steady_rate, torch_threads
from kd_system.export.onnx_file import to_onnx
from kd_system.export.quantize import quantize_cnn, quantize_mlp
from kd_system.export.records import Exported, exported_network, input_dtype
from kd_system.export.torchscript_file import to_torchscript
from kd_system.policies.files import FrozenPolicy, PolicyBundle
from kd_system.policies.networks import MLP, cnn_spec
from kd_system.policies.opaque import load_opaque

ENGINES = ("torch_eager", "torchscript", "onnx_fp32", "onnx_int8")
BATCH = 64
# Batch-1 calls per engine: enough for a p99 that is not the single worst call, capped so the
# slow CNN engines fit the same time budget as the MLPs.
MAX_CALLS = {"mlp": 2000, "cnn": 500}
PACE_CALLS = 10  # timed after the warm-up to size the sample
THREADS = 1  # per core: torch and onnxruntime (policies/opaque.py sets 1 intra-op thread) alike

Forward = Callable[[np.ndarray], Any]


@dataclass(frozen=True)
class Budget:
    window_s: float  # batch-1 sampling budget and batch-64 window, per engine
    warmup_s: float
    min_calls: int = 200


@dataclass(frozen=True)
class Engine:
    name: str
    forward: Forward
    nbytes: int  # the engine's file on disk: safetensors for eager, the exported file otherwise


def _opaque(bundle: PolicyBundle, exported: Exported, source: str) -> Forward:
    spec = bundle.spec
    network = exported_network(exported.fmt, input_dtype(spec))
    return FrozenPolicy(spec, load_opaque(network, spec.num_actions, exported.data, source)).outputs


def build_engines(bundle: PolicyBundle, source: str, calibration: np.ndarray) -> list[Engine]:
    """The export stage's own exporters and quantizers (kd_system/export), as `kd-system export` makes files."""
    spec, module = bundle.spec, bundle.module()
    script = to_torchscript(module, spec, source)
    onnx = to_onnx(module, spec, source)
    # The quantizer `kd-system export --int8` picks: static QDQ with calibration for CNNs, dynamic for MLPs.
    int8 = quantize_cnn(onnx, calibration) if spec.network.get("kind") == "cnn" else quantize_mlp(onnx)
    return [Engine("torch_eager", FrozenPolicy(spec, module).outputs, len(bundle.weights)),
            Engine("torchscript", _opaque(bundle, script, source), len(script.data)),
            Engine("onnx_fp32", _opaque(bundle, onnx, source), len(onnx.data)),
            Engine("onnx_int8", _opaque(bundle, int8, source), len(int8.data))]


def latency_us(forward: Forward, singles: list[np.ndarray], budget: Budget, max_calls: int) -> dict[str, float]:
    """p50/p99 of single-observation calls, each timed on its own (a mean would hide the tail)."""
    feed = itertools.cycle(singles)
    end, warm = time.perf_counter() + budget.warmup_s, 0
    while warm < PACE_CALLS or time.perf_counter() < end:
        forward(next(feed))
        warm += 1
    start = time.perf_counter_ns()
    for _ in range(PACE_CALLS):
        forward(next(feed))
    pace_ns = max(1, (time.perf_counter_ns() - start) // PACE_CALLS)
    calls = int(min(max_calls, max(budget.min_calls, budget.window_s * 1e9 / pace_ns)))
    times = np.empty(calls, dtype=np.int64)
    for index in range(calls):
        obs = next(feed)
        begin = time.perf_counter_ns()
        forward(obs)
        times[index] = time.perf_counter_ns() - begin
    p50, p99 = np.percentile(times, [50, 99]) / 1e3
    return {"p50_us": float(p50), "p99_us": float(p99), "calls": calls}


def states_per_s(forward: Forward, batches: list[np.ndarray], budget: Budget) -> float:
    feed = itertools.cycle(batches)

    def step() -> int:
        forward(next(feed))
        return BATCH

    return steady_rate(step, budget.warmup_s, budget.window_s)


def split_states(states: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Real observations as single-state batches and as batches of 64 (wrapping if too few)."""
    singles = [states[i:i + 1] for i in range(len(states))]
    count = max(1, len(states) // BATCH)
    tiled = np.resize(states, (count * BATCH, *states.shape[1:]))
    return singles, [tiled[i * BATCH:(i + 1) * BATCH] for i in range(count)]


def measure(forward: Forward, states: np.ndarray, budget: Budget, kind: str) -> dict[str, float]:
    """Batch-1 latency and batch-64 throughput, both on one torch thread (restored after)."""
    singles, batches = split_states(states)
    with torch_threads(THREADS):
        figures = latency_us(forward, singles, budget, MAX_CALLS.get(kind, MAX_CALLS["cnn"]))
        figures["states_per_s"] = states_per_s(forward, batches, budget)
    return figures


def mlp_floor(module: nn.Module) -> Forward | None:
    """The student MLP as a bare numpy matmul chain: what the arithmetic costs with no framework
    around it. None for networks it cannot mirror exactly (CNNs, obs_norm, non-ReLU)."""
    if not isinstance(module, MLP) or module.obs_norm is not None:
        return None
    if not all(isinstance(layer, (nn.Linear, nn.ReLU)) for layer in module.layers):
        return None
    layers = [(layer.weight.detach().numpy().T.copy(), layer.bias.detach().numpy().copy())
              for layer in module.layers if isinstance(layer, nn.Linear)]

    def forward(obs: np.ndarray) -> np.ndarray:
        x = obs
        for weight, bias in layers[:-1]:
            x = np.maximum(x @ weight + bias, 0.0)
        weight, bias = layers[-1]
        return x @ weight + bias

    return forward


def network_macs(network: dict[str, Any], obs_shape: tuple[int, ...], num_actions: int) -> int | None:
    """Multiply-adds of one forward from the spec: conv out_c*out_h*out_w*in_c*k*k, linear in*out.
    None for opaque files, whose layer sizes the spec does not say."""
    kind = network.get("kind")
    if kind == "mlp":
        sizes = [math.prod(obs_shape), *(int(h) for h in network.get("hidden", [])), num_actions]
        return sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))
    if kind != "cnn":
        return None
    fields = {**(cnn_spec(network["preset"]) if "preset" in network else {}), **network}  # as networks._build_cnn
    channels, height, width = obs_shape
    macs = 0
    for out_c, kernel, stride in zip(fields["channels"], fields["kernels"], fields["strides"]):
        height, width = (height - kernel) // stride + 1, (width - kernel) // stride + 1
        macs += out_c * height * width * channels * kernel * kernel
        channels = out_c
    sizes = [channels * height * width, *fields["fc"], num_actions]
    return macs + sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))
