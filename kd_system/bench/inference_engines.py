"""The inference section's parts: one policy built in the teacher engines a run can label with
(teachers/engines.py), plus torch with channels-last weights for CNNs (a layout choice, measured
here only), each behind the call the actors use (``FrozenPolicy.outputs``: numpy observations
in, numpy outputs out), so every engine pays the same conversions; the timing of one engine
(batch-1 percentiles, batch-64 states/s); the numpy floor of an MLP; and multiply-adds counted
from a network spec."""
from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from kd_system.bench.timing import steady_rate, torch_threads
from kd_system.policies.files import FrozenPolicy, PolicyBundle
from kd_system.policies.networks import MLP, cnn_spec
from kd_system.teachers.engines import build_engines as build_engine_bundles

# The bench's names (its --json keys) for the run's teacher.engine values.
TEACHER_ENGINES = {"torch_eager": "torch", "torchscript": "torchscript", "onnx_fp32": "onnxruntime",
                   "onnx_int8": "onnxruntime-int8"}
ENGINES = tuple(TEACHER_ENGINES)
CHANNELS_LAST = "torch_channels_last"  # CNNs only: an MLP has no image layout to change
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


def engine_names(network: dict[str, Any]) -> tuple[str, ...]:
    """The engines measured for a network: every teacher engine, and channels-last torch for CNNs."""
    return (ENGINES[0], CHANNELS_LAST, *ENGINES[1:]) if network.get("kind") == "cnn" else ENGINES


def build_engines(bundle: PolicyBundle, source: str, calibration: np.ndarray) -> list[Engine]:
    """The engines a run's actors would label with (teachers/engines.py, the export stage's exporters
    and quantizers), and for CNNs torch with channels-last weights: the input stays as envs give it
    (NCHW), so the layout's conversions are paid inside the forward, as an actor would pay them."""
    built = build_engine_bundles(bundle, list(TEACHER_ENGINES.values()), source, calibration)
    engines = {name: Engine(name, FrozenPolicy.from_bundle(built[engine]).outputs, len(built[engine].weights))
               for name, engine in TEACHER_ENGINES.items()}
    if CHANNELS_LAST in engine_names(bundle.spec.network):
        module = bundle.module().to(memory_format=torch.channels_last)
        engines[CHANNELS_LAST] = Engine(CHANNELS_LAST, FrozenPolicy(bundle.spec, module).outputs, len(bundle.weights))
    return [engines[name] for name in engine_names(bundle.spec.network)]


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
