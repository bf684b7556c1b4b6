"""RLlib's greedy path (lists of Linear/Conv2d layers and activations) onto our MLP or ConvNet,
with the exact folds this needs: the DQN dueling head and a pixel input offset.

Dueling: RLlib's Q = V(h) + A(h) - mean_a A(h), with A and V two MLP heads on the same latent h.
Centring is linear, so it folds into the heads' last layers; the two heads then run side by side
as one wider MLP (first layers stacked, later layers block-diagonal), and the last layer sums
them. With no hidden head layers (RLlib's default head_fcnet_hiddens=[]) the whole head is one
Linear: Q = (W_a - mean_rows(W_a) + w_v) h + (b_a - mean(b_a) + b_v).

Input offset: a module trained on x * scale + offset ([-1, 1] pixels) gets the offset folded into
its first convolution's bias, which is exact because our convolutions do not pad.

Mapping: layer widths give the spec; RLlib's CNN flattens (height, width, channels) and ours
(channels, height, width), so the first fully connected layer's columns are permuted.
"""
from __future__ import annotations

import copy
from typing import Any, Callable

import torch
from torch import nn

from kd_system.envs.make import EnvSpaces
from kd_system.errors import CheckpointError
from kd_system.policies.networks import build_network

ACTIVATIONS = {nn.ReLU: "relu", nn.Tanh: "tanh", nn.ELU: "elu", nn.GELU: "gelu", nn.SiLU: "silu"}


def _linear(weight: torch.Tensor, bias: torch.Tensor) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():  # folded in float64, stored as the float32 our networks hold
        layer.weight.copy_(weight.float())
        layer.bias.copy_(bias.float())
    return layer


def _split(head: list[nn.Module], what: str) -> tuple[list[nn.Linear], list[nn.Module]]:
    """(Linear layers, activations between them); the head must alternate and end with a Linear."""
    linears, acts = head[0::2], head[1::2]
    if not head or len(linears) != len(acts) + 1 or not all(isinstance(m, nn.Linear) for m in linears) \
            or any(isinstance(m, nn.Linear) for m in acts) or any(m.bias is None for m in linears):
        raise CheckpointError(f"cannot fold the dueling {what} head {[type(m).__name__ for m in head]}: expected "
                              "Linear layers with biases and one activation between each pair")
    return linears, acts


def fold_dueling(advantage: list[nn.Module], value: list[nn.Module]) -> list[nn.Module]:
    """One head (Linear, activation, ..., Linear) computing V + A - mean(A), exactly."""
    a_lins, a_acts = _split(advantage, "advantage (af)")
    v_lins, v_acts = _split(value, "value (vf)")
    if len(a_lins) != len(v_lins) or [repr(m) for m in a_acts] != [repr(m) for m in v_acts]:
        raise CheckpointError("cannot fold the dueling heads: the advantage (af) and value (vf) heads differ in "
                              "depth or activations; export this module with torch.onnx and import the .onnx")
    folded: list[nn.Module] = []
    for index, (a, v) in enumerate(zip(a_lins, v_lins)):
        wa, ba = a.weight.detach().cpu().double(), a.bias.detach().cpu().double()
        wv, bv = v.weight.detach().cpu().double(), v.bias.detach().cpu().double()
        if index == len(a_lins) - 1:  # centre the advantages, then add the value to every action
            wa, ba = wa - wa.mean(0, keepdim=True), ba - ba.mean()
            weight = wa + wv if index == 0 else torch.cat([wa, wv.expand(wa.shape[0], -1)], 1)
            folded.append(_linear(weight, ba + bv))
        else:
            weight = torch.cat([wa, wv], 0) if index == 0 else torch.block_diag(wa, wv)
            folded += [_linear(weight, torch.cat([ba, bv])), copy.deepcopy(a_acts[index])]
    return folded


def fold_input_offset(conv: nn.Conv2d, offset: float) -> nn.Conv2d:
    """A copy of ``conv`` that gives on x what ``conv`` gives on x + offset (no padding)."""
    if any(int(p) for p in conv.padding) or conv.bias is None:
        raise CheckpointError("cannot fold an input offset into a padded or bias-free first convolution")
    folded = copy.deepcopy(conv)
    with torch.no_grad():
        shift = conv.weight.detach().double().sum(dim=(1, 2, 3)) * offset
        folded.bias.copy_((conv.bias.detach().double() + shift).float())
    return folded


def _activation(layers: list[nn.Module], name: Callable[[nn.Module], str]) -> str:
    """The one activation of the path; refuses layers our networks do not have."""
    found = set()
    for layer in layers:
        if isinstance(layer, (nn.Linear, nn.Conv2d)):
            continue
        kind = ACTIVATIONS.get(type(layer))
        if kind is None or repr(layer) != repr(type(layer)()):  # ELU(alpha=2) etc. are not ours
            raise CheckpointError(f"RLlib layer {name(layer)} ({layer}) has no counterpart in kd_system's networks "
                                  f"(Linear, Conv2d and {'/'.join(ACTIVATIONS.values())} with defaults)")
        found.add(kind)
    if len(found) > 1:
        raise CheckpointError(f"the RLlib module mixes activations {sorted(found)} (e.g. fcnet_activation vs "
                              "head_fcnet_activation); kd_system's networks use one throughout: export to ONNX instead")
    return found.pop() if found else "relu"


def _check_alternation(layers: list[nn.Module], trailing: bool, name: Callable[[nn.Module], str]) -> None:
    """Weight layer, activation, weight layer, ...: what our MLP and ConvNet are built of."""
    for index, layer in enumerate(layers):
        weighted = isinstance(layer, (nn.Linear, nn.Conv2d))
        if weighted != (index % 2 == 0) or (weighted and layer.bias is None):
            raise CheckpointError(f"RLlib layer {name(layer)} ({layer}) breaks the Linear/Conv2d-with-bias, "
                                  "activation, ... pattern kd_system's networks have")
    if (len(layers) % 2 == 0) != trailing:  # conv stacks end with an activation, dense stacks with a Linear
        last = f"{name(layers[-1])} ({layers[-1]})" if layers else "no layer"
        raise CheckpointError(f"RLlib's greedy path ends a {'conv' if trailing else 'dense'} stack with {last}")


def to_network(convs: list[nn.Module], dense: list[nn.Module], spaces: EnvSpaces, scale: float, offset: float,
               name: Callable[[nn.Module], str]) -> tuple[dict[str, Any], nn.Module]:
    """Our network spec inferred from the layer shapes, with the source's weights copied in."""
    activation = _activation(convs + dense, name)  # first: it names layers we have no counterpart for
    _check_alternation(convs, True, name)
    _check_alternation(dense, False, name)
    spec: dict[str, Any] = {"hidden": [layer.out_features for layer in dense[0:-1:2]], "activation": activation}
    if convs:
        for conv in convs[0::2]:
            if conv.kernel_size[0] != conv.kernel_size[1] or conv.stride[0] != conv.stride[1] or \
                    any(conv.padding) or set(conv.dilation) != {1} or conv.groups != 1:
                raise CheckpointError(f"RLlib layer {name(conv)} ({conv}) is not a square, unpadded, undilated "
                                      "convolution like kd_system's ConvNet has")
        spec = {"kind": "cnn", "channels": [c.out_channels for c in convs[0::2]],
                "kernels": [c.kernel_size[0] for c in convs[0::2]], "strides": [c.stride[0] for c in convs[0::2]],
                "fc": spec["hidden"], "activation": spec["activation"], "input_scale": scale}
        if offset:
            convs = [fold_input_offset(convs[0], offset), *convs[1:]]
    else:
        spec = {"kind": "mlp", **spec}
    ours = build_network(spec, spaces.obs_shape, spaces.num_actions)
    mine = [layer for layer in ours.layers if isinstance(layer, (nn.Linear, nn.Conv2d))]
    theirs = [layer for layer in convs + dense if isinstance(layer, (nn.Linear, nn.Conv2d))]
    flat = list(ours.layers).index(next(m for m in ours.layers if isinstance(m, nn.Flatten))) if convs else 0
    with torch.no_grad():
        conv_out = ours.layers[:flat](torch.zeros(1, *spaces.obs_shape)).shape[1:] if convs else None
        for index, (src, dst) in enumerate(zip(theirs, mine)):
            weight = src.weight.detach().cpu().float()
            if weight.shape != dst.weight.shape:
                raise CheckpointError(f"RLlib layer {name(src)} has shape {tuple(weight.shape)}, the inferred network "
                                      f"{tuple(dst.weight.shape)}: the module does not fit {spaces.obs_shape} inputs")
            if convs and index == len(convs) // 2:  # first fc: RLlib flattens (h, w, c), we flatten (c, h, w)
                channels, height, width = conv_out
                weight = weight.reshape(-1, height, width, channels).permute(0, 3, 1, 2).reshape(weight.shape)
            dst.weight.copy_(weight)
            dst.bias.copy_(src.bias.detach().cpu().float())
    return spec, ours.eval()
