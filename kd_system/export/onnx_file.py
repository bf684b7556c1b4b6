"""fp32 ONNX files of our networks: input ``obs`` (dynamic batch), output ``q`` or ``logits``.

Exporter: torch.onnx's ``dynamo=True`` (torch.export-based) path, picked by figures against the
legacy ``dynamo=False`` (TorchScript-based) one. torch 2.13, onnxruntime 1.32, this 2-core machine
shared with a training job; parity on 1,000 states; latency with one onnxruntime thread, median of
5 interleaved rounds of both files (legacy / dynamo):

- MLP 4-256-256-2: export 0.009 s / 0.85 s; max abs diff 1.8e-7 / 1.8e-7, agreement 100% / 100%;
  latency batch 1: 11.7 / 11.3 us, batch 32: 34.4 / 34.1 us.
- CNN rusu-4, 6 actions, uint8 input: export 0.017 s / 1.12 s; max abs diff 2.2e-8 / 2.2e-8,
  agreement 100% / 100%; latency batch 1: 45.0 / 45.1 us, batch 32: 1426 / 1461 us.
- CNN nature (the shipped Breakout teacher): max abs diff 1.4e-6 / 1.4e-6; its int8 versions
  (quantize.py) had the same agreement, KL and latency from either graph.

Parity, int8 results and latency are the same within noise (onnxruntime fuses both graphs to the
same kernels); only export time differs, by about a second on a one-off command. The legacy
exporter warns that it "will be removed" (torch >= 2.9 defaults to dynamo), so the maintained
exporter is the one that keeps this command working. Its graph is also the cleaner one (no
Flatten/Cast nodes around an MLP's float input).
"""
from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from typing import Iterator

import torch

from kd_system.errors import CheckpointError
from kd_system.policies.files import PolicySpec

from kd_system.export.records import INPUT_NAME, OPSET, Exported, input_dtype

EXPORTER = "torch.onnx.export(dynamo=True)"
EXAMPLE_BATCH = 2  # not 1: torch.export would specialise a batch of 1 into the graph


@contextmanager
def quiet_torch() -> Iterator[None]:
    """torch.onnx logs missing torchvision ops and warns about its own internals: noise for users."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        logger.setLevel(level)


def example_input(spec: PolicySpec) -> torch.Tensor:
    dtype = torch.uint8 if input_dtype(spec) == "uint8" else torch.float32
    return torch.zeros((EXAMPLE_BATCH, *spec.obs_shape), dtype=dtype)


def to_onnx(module: torch.nn.Module, spec: PolicySpec, source: str) -> Exported:
    """The network's own forward, scaling included, so the file takes observations as envs give them."""
    try:
        with quiet_torch(), torch.no_grad():
            program = torch.onnx.export(module.eval(), (example_input(spec),), dynamo=True, verbose=False,
                                        input_names=[INPUT_NAME], output_names=[spec.output_kind],
                                        dynamic_shapes=({0: torch.export.Dim("batch")},), opset_version=OPSET)
    except Exception as exc:  # the exporter raises many types; none of them is the user's to handle
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise CheckpointError(f"torch.onnx could not export {source} ({first}); try --format torchscript") from None
    return Exported(program.model_proto.SerializeToString(), "onnx", EXPORTER, OPSET)
