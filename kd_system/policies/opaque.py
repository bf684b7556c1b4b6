"""Opaque teachers: a TorchScript or ONNX file run as it is, behind the same ``nn.Module`` call as
our own networks, so actors, the evaluator and lookahead need no second code path.

The spec's network says how to feed it: ``{"kind": "onnx", "input_layout": "hwc", "input_scale":
0.00392156862745098, "input_dtype": "float32"}`` turns our pipeline's observations (Atari: uint8
stacks (4, 84, 84), oldest frame first) into what the file was exported for. The file's bytes
travel as the bundle's weights; TorchScript runs under ``torch.jit.load`` (its own restricted
unpickler: tensors and TorchScript code, no Python objects) and ONNX under onnxruntime.
"""
from __future__ import annotations

import io
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

from kd_system.errors import CheckpointError

OPAQUE_FILES = {"torchscript": "model.pt", "onnx": "model.onnx"}
INPUT_DTYPES = ("float32", "uint8")


def is_opaque(network: dict[str, Any]) -> bool:
    return network.get("kind") in OPAQUE_FILES


def _input_fields(network: dict[str, Any]) -> tuple[str, float, str]:
    layout = str(network.get("input_layout", "chw"))
    scale = float(network.get("input_scale", 1.0))
    dtype = str(network.get("input_dtype", "float32"))
    if layout not in ("chw", "hwc"):
        raise CheckpointError(f"network.input_layout {layout!r} must be chw or hwc")
    if dtype not in INPUT_DTYPES:
        raise CheckpointError(f"network.input_dtype {dtype!r} must be one of {INPUT_DTYPES}")
    return layout, scale, dtype


class _Opaque(nn.Module):
    """Our observations in, the file's outputs (batch, num_actions) out, as float32."""

    def __init__(self, network: dict[str, Any], num_actions: int, num_params: int):
        super().__init__()
        self.layout, self.scale, self.dtype = _input_fields(network)
        self.num_actions = num_actions
        self.opaque_num_params = num_params  # read by networks.count_parameters

    def adapt(self, obs: torch.Tensor) -> torch.Tensor:
        x = obs if self.dtype == "uint8" else obs.float() * self.scale
        if self.layout == "hwc" and x.dim() == 4:  # (batch, stack, h, w) -> (batch, h, w, stack)
            x = x.permute(0, 2, 3, 1)
        return x.to(torch.uint8) if self.dtype == "uint8" else x.float().contiguous()

    def check_output(self, out: torch.Tensor, batch: int) -> torch.Tensor:
        if tuple(out.shape) != (batch, self.num_actions):
            raise CheckpointError(f"the {self.kind} teacher returned shape {tuple(out.shape)}, not (batch, "
                                  f"{self.num_actions}); export it with one output of one value per action")
        return out.float()


class TorchScriptPolicy(_Opaque):
    kind = "torchscript"

    def __init__(self, network: dict[str, Any], num_actions: int, data: bytes, source: str):
        with warnings.catch_warnings():  # torch.jit.load is deprecated in favour of torch.export; it still works
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                scripted = torch.jit.load(io.BytesIO(data), map_location="cpu")
            except (RuntimeError, ValueError) as exc:
                first = str(exc).strip().splitlines()[0].split(". ")[0][:200] if str(exc).strip() else type(exc).__name__
                raise CheckpointError(f"{source} is not a TorchScript file torch.jit.load can read ({first}); "
                                      "save the model with torch.jit.save") from None
        super().__init__(network, num_actions, sum(p.numel() for p in scripted.parameters()))
        self.scripted = scripted.eval()

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        out = self.scripted(self.adapt(obs))
        return self.check_output(out, obs.shape[0])


class OnnxPolicy(_Opaque):
    kind = "onnx"

    def __init__(self, network: dict[str, Any], num_actions: int, data: bytes, source: str):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # an actor is one CPU; ORT would otherwise spawn one thread per core
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self_session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(f"{source} is not an ONNX model onnxruntime can load ({first}); "
                                  "export it with torch.onnx.export or check the file") from None
        super().__init__(network, num_actions, _onnx_param_count(data))
        self.session = self_session
        inputs = self_session.get_inputs()
        if len(inputs) != 1:
            raise CheckpointError(f"{source} takes {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); "
                                  "a teacher must take one: the observation batch")
        self.input_name = inputs[0].name
        self.output_name = self_session.get_outputs()[0].name

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = self.adapt(obs).cpu().numpy()
        out = self.session.run([self.output_name], {self.input_name: x})[0]
        return self.check_output(torch.from_numpy(np.asarray(out, dtype=np.float32)), obs.shape[0]).to(obs.device)


def _onnx_param_count(data: bytes) -> int:
    """Elements in the model's initializers (its weights), or 0 where the onnx package is missing."""
    try:
        import onnx
    except ImportError:
        return 0
    model = onnx.load_from_string(data)
    return int(sum(int(np.prod(init.dims)) if len(init.dims) else 1 for init in model.graph.initializer))


def load_opaque(network: dict[str, Any], num_actions: int, data: bytes, source: str) -> nn.Module:
    kind = network["kind"]
    module = (TorchScriptPolicy if kind == "torchscript" else OnnxPolicy)(network, num_actions, data, source)
    return module.eval()
