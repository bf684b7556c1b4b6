"""TorchScript files: the network traced on an example batch, then frozen (weights inlined as
constants, so the file is code plus tensors and nothing to train). Tracing, not scripting: our
networks branch only on settings fixed at build time, which tracing bakes in."""
from __future__ import annotations

import io

import torch

from kd_system.errors import CheckpointError
from kd_system.policies.files import PolicySpec

from kd_system.export.onnx_file import example_input, quiet_torch
from kd_system.export.records import Exported

EXPORTER = "torch.jit.trace + torch.jit.freeze"


def to_torchscript(module: torch.nn.Module, spec: PolicySpec, source: str) -> Exported:
    """A uint8 example for pixel networks; ConvNet casts, so the file takes float frames too."""
    try:
        with quiet_torch(), torch.no_grad():  # torch.jit is deprecated in favour of torch.export; it still works
            traced = torch.jit.trace(module.eval(), example_input(spec), check_trace=False)
            frozen = torch.jit.freeze(traced)
            buffer = io.BytesIO()
            torch.jit.save(frozen, buffer)
    except Exception as exc:  # tracing raises RuntimeError and its own types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise CheckpointError(f"torch.jit could not trace {source} ({first}); try --format onnx") from None
    return Exported(buffer.getvalue(), "torchscript", EXPORTER, None)
