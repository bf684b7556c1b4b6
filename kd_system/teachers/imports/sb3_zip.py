"""Reading a Stable-Baselines3 zip (``model.save(...)``) without unpickling anything.

The zip holds ``policy.pth`` (a plain state dict, read with ``weights_only=True``), ``data`` (JSON)
and the version files. In ``data`` every value that JSON cannot hold is a base64 cloudpickle blob
under ``:serialized:``, with its first-level attributes written beside it as plain JSON (raw when
JSON can hold them, ``str()`` otherwise). We read those plain fields, and where a fact lives only
in a blob (which class, which activation) we walk the pickle's opcodes with ``pickletools.genops``,
which parses and never imports or calls anything.
"""
from __future__ import annotations

import base64
import binascii
import io
import json
import pickle
import pickletools
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kd_system.errors import CheckpointError

_MARK = object()  # a MARK on the simulated stack
_STRINGS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING", "BINSTRING", "SHORT_BINSTRING"}
_SCALARS = {"BININT", "BININT1", "BININT2", "INT", "LONG", "LONG1", "LONG4", "BINFLOAT", "FLOAT"}
_CONSTANTS = {"NEWTRUE": True, "NEWFALSE": False, "NONE": None}


@dataclass(frozen=True)
class Global:
    """A class or function a pickle refers to by name (it would be imported on unpickling)."""
    module: str
    name: str

    def __str__(self) -> str:
        return f"{self.module}.{self.name}"


@dataclass(frozen=True)
class Blob:
    """What a pickle names, read from its opcodes: every global, and dict items whose key is a string
    and whose value is a string, number, bool, None or global (containers are not rebuilt)."""
    globals: tuple[Global, ...] = ()
    items: dict[str, Any] = field(default_factory=dict)


def _pop_args(stack: list[Any], before: list[Any]) -> tuple[list[Any], list[Any]]:
    """Pop what an opcode consumes, per pickletools' own stack description: the fixed arguments, and
    the items above the MARK where the opcode takes a slice (APPENDS, SETITEMS, ...)."""
    sliced: list[Any] = []
    fixed_count = len(before)
    if before and before[-1] is pickletools.stackslice:
        while stack and stack[-1] is not _MARK:
            sliced.insert(0, stack.pop())
        if stack:
            stack.pop()
        fixed_count = before.index(pickletools.markobject)
    fixed = [stack.pop() if stack else None for _ in range(fixed_count)][::-1]
    return fixed, sliced


def _record_items(items: dict[str, Any], pairs: list[Any]) -> None:
    for key, value in zip(pairs[::2], pairs[1::2]):
        if isinstance(key, str) and (value is None or isinstance(value, (str, int, float, Global))):
            items[key] = value


def read_blob(encoded: str) -> Blob:
    """Walk a base64 pickle's opcodes, simulating its stack and memo for names only; nothing runs."""
    stack: list[Any] = []
    memo: dict[int, Any] = {}
    found: list[Global] = []
    items: dict[str, Any] = {}
    for op, arg, _ in pickletools.genops(base64.b64decode(encoded, validate=True)):
        name = op.name
        if name in _STRINGS or name in _SCALARS:
            stack.append(arg)
        elif name in _CONSTANTS:
            stack.append(_CONSTANTS[name])
        elif name == "MARK":
            stack.append(_MARK)
        elif name in ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"):
            memo[len(memo) if name == "MEMOIZE" else int(arg)] = stack[-1] if stack else None
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            stack.append(memo.get(int(arg)))
        elif name in ("STACK_GLOBAL", "GLOBAL"):
            module, attr = str(arg).split(" ", 1) if name == "GLOBAL" else map(str, _pop_args(stack, [0, 0])[0])
            found.append(Global(module, attr))
            stack.append(found[-1])
        else:
            fixed, sliced = _pop_args(stack, op.stack_before)
            if name in ("SETITEM", "SETITEMS"):
                _record_items(items, fixed[1:] if name == "SETITEM" else sliced)
            stack.extend(_MARK if item is pickletools.markobject else None for item in op.stack_after)
    return Blob(tuple(found), items)


@dataclass(frozen=True)
class SB3Zip:
    path: Path
    data: dict[str, Any]
    state: dict[str, torch.Tensor]
    version: str  # the stable-baselines3 version that saved it, or "unknown"

    def fields(self, key: str) -> dict[str, Any]:
        """The plain JSON fields of a ``data`` entry (a dict entry's own keys, or an object's attributes)."""
        entry = self.data.get(key)
        if isinstance(entry, dict):
            return {k: v for k, v in entry.items() if k not in (":serialized:", ":type:")}
        return {}

    def type_name(self, key: str) -> str:
        entry = self.data.get(key)
        return str(entry.get(":type:", "")) if isinstance(entry, dict) else ""

    def blob(self, key: str) -> Blob:
        """The names inside an entry's cloudpickle blob (empty when the entry is plain JSON)."""
        entry = self.data.get(key)
        if not isinstance(entry, dict) or not isinstance(entry.get(":serialized:"), str):
            return Blob()
        try:
            return read_blob(entry[":serialized:"])
        except (ValueError, binascii.Error, IndexError, TypeError) as exc:
            raise CheckpointError(f"{self.path}: data.{key} holds a corrupt pickle blob ({exc}); re-save the "
                                  "model with model.save()") from None

    def need(self, key: str) -> torch.Tensor:
        if key not in self.state:
            raise CheckpointError(f"{self.path}: policy.pth has no {key}; the file is not a complete "
                                  "Stable-Baselines3 policy (re-save it with model.save())")
        return self.state[key]


def _version(archive: zipfile.ZipFile) -> str:
    names = archive.namelist()
    if "_stable_baselines3_version" in names:
        return archive.read("_stable_baselines3_version").decode("utf-8", "replace").strip() or "unknown"
    if "system_info.txt" in names:
        found = re.search(r"Stable-Baselines3:\s*(\S+)", archive.read("system_info.txt").decode("utf-8", "replace"))
        return found.group(1) if found else "unknown"
    return "unknown"


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:160] if lines else type(exc).__name__


def open_zip(path: Path) -> SB3Zip:
    """The zip's data JSON, policy state dict and version; one-line CheckpointError if it is not one."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            missing = [name for name in ("data", "policy.pth") if name not in names]
            if missing:
                raise CheckpointError(f"{path} has no {missing[0]} member: it is not a Stable-Baselines3 model.save() "
                                      "zip; pass the zip that model.save() wrote, or --from")
            data = json.loads(archive.read("data").decode("utf-8"))
            state = torch.load(io.BytesIO(archive.read("policy.pth")), weights_only=True, map_location="cpu")
            version = _version(archive)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, UnicodeDecodeError,
            json.JSONDecodeError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"{path} cannot be read as a Stable-Baselines3 zip ({_first_line(exc)}); "
                              "the file is corrupt or not a model.save() zip") from None
    except pickle.UnpicklingError as exc:  # the weights-only unpickler refuses anything but tensors and containers
        raise CheckpointError(f"{path}: policy.pth is not a plain state dict (weights-only load refused it: "
                              f"{_first_line(exc)}); re-save the model with model.save()") from None
    if not isinstance(data, dict) or not isinstance(state, dict) or \
            not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: data or policy.pth has an unexpected structure; re-save the model with "
                              "model.save()")
    return SB3Zip(path, data, dict(state), version)
