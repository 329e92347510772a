"""Where each weight of an encoder really lives, so that a swap writes (and a check reads) what the forward uses.

A module's parameter is not always the tensor its forward pass reads. accelerate's offload hooks keep
the parameter on `meta` and rebuild it before each forward from a `weights_map` (a dict in memory for
`cpu_offload` / `enable_sequential_cpu_offload`, `.dat` files or safetensors files on disk for
`disk_offload` / `device_map` with `"disk"`); diffusers' group offloading to disk replaces the
parameter with an empty tensor and reloads the group from its own safetensors file. Each of those is
a `Placement` in `PLACEMENTS`: the first that claims a tensor gives its `TensorHome`, which reads the
value exactly as the forward will and writes a new one where the forward will find it. A tensor no
placement claims is refused before anything is written, saying what to do.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import UnsupportedModelError


class TensorHome:
    """One weight as the forward pass sees it: `read` the live value, `write` a slice of the flattened tensor.

    Writes may be staged; `finish` makes them visible to the forward (and to `read`).
    """

    key: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    where: str = "parameter"
    immediate = False  # a write is visible to `read` (and the forward) at once, before `finish`

    def read(self) -> torch.Tensor:
        raise NotImplementedError

    def write(self, offset: int, values: torch.Tensor) -> None:
        raise NotImplementedError

    def fill(self, fd: int, start: int, nbytes: int) -> torch.Tensor | None:
        """Write the whole tensor straight from bytes `start:start + nbytes` of the open file `fd` (same dtype),
        with no staging copy; returns the tensor written into, or None when this home cannot (use `write`)."""
        return None

    def finish(self) -> None:
        """Make staged writes visible; idempotent."""

    def retype(self, dtype: torch.dtype) -> None:
        """The module was cast to `dtype` (only plain parameters can be)."""
        self.dtype = dtype


@dataclass
class InMemory(TensorHome):
    """A tensor the forward uses as it is: a parameter, a buffer, or an accelerate in-memory `weights_map` entry."""

    key: str
    get: Callable[[], torch.Tensor]
    where: str = "parameter"
    immediate = True

    @property
    def shape(self) -> tuple[int, ...]:  # type: ignore[override]
        return tuple(self.get().shape)

    @property
    def dtype(self) -> torch.dtype:  # type: ignore[override]
        return self.get().dtype

    def retype(self, dtype: torch.dtype) -> None:
        pass  # read from the live tensor

    def read(self) -> torch.Tensor:
        return self.get()

    def write(self, offset: int, values: torch.Tensor) -> None:
        tensor = self.get()
        with torch.no_grad():
            if tensor.is_contiguous():
                tensor.view(-1)[offset : offset + values.numel()].copy_(values)
            else:  # strided (a transposed weight): put_ indexes the tensor in its logical flat order
                index = torch.arange(offset, offset + values.numel(), device=tensor.device)
                tensor.put_(index, values.to(tensor.device))

    def fill(self, fd: int, start: int, nbytes: int) -> torch.Tensor | None:
        tensor = self.get()
        if (
            tensor.device.type != "cpu"
            or not tensor.is_contiguous()
            or tensor.numel() * tensor.element_size() != nbytes
        ):
            return None
        target = memoryview(tensor.detach().view(-1).view(torch.uint8).numpy()) if nbytes else memoryview(b"")
        done = 0
        while done < nbytes:  # one read per tensor (a read returns at most about 2 GB)
            got = os.preadv(fd, [target[done:]], start + done)
            if got <= 0:
                raise OSError(f"{self.key}: the checkpoint ended after {done} of {nbytes} bytes")
            done += got
        return tensor


@dataclass
class DatFile(TensorHome):
    """An accelerate `OffloadedWeightsLoader` entry read from `<save_folder>/<key>.dat` on every forward.

    An entry that points into a safetensors file (transformers' `device_map` with "disk" reads the
    model's own checkpoint) is never written to: the first write creates a `.dat` file of our own in the
    offload folder and points the loader's index at it.
    """

    key: str
    loader: Any  # accelerate.utils.OffloadedWeightsLoader
    full_key: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    where: str = "accelerate disk offload"

    def read(self) -> torch.Tensor:
        return self.loader[self.full_key]

    def write(self, offset: int, values: torch.Tensor) -> None:
        info = self.loader.index[self.full_key]
        if info.get("safetensors_file") is not None or "shape" not in info:
            self._own_file()
        stored = _numpy_view(values)
        array = np.memmap(self._path(), dtype=stored.dtype, mode="r+", shape=(max(1, _numel(self.shape)),))
        array[offset : offset + stored.size] = stored
        array.flush()
        del array

    def _path(self) -> Path:
        return Path(self.loader.save_folder) / f"{self.full_key}.dat"

    def _own_file(self) -> None:
        if self.loader.save_folder is None:
            folder = tempfile.mkdtemp(prefix="safe-encoders-offload-")
            weakref.finalize(self.loader, shutil.rmtree, folder, True)
            self.loader.save_folder = folder
        current = self.read().to(self.dtype)  # keeps the tensor whole if a later write fails halfway
        stored = _numpy_view(current.reshape(-1) if current.dim() else current.reshape(1))
        array = np.memmap(self._path(), dtype=stored.dtype, mode="w+", shape=stored.shape)
        array[:] = stored
        array.flush()
        del array
        self.loader.index[self.full_key] = {"dtype": str(self.dtype).removeprefix("torch."), "shape": list(self.shape)}


@dataclass
class GroupFile(TensorHome):
    """A tensor of a diffusers group offloaded to disk: reloaded from the group's safetensors file on each onload."""

    key: str
    group: Any  # diffusers.hooks.group_offloading.ModuleGroup
    group_key: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    staged: dict[str, dict[str, torch.Tensor]] = field(repr=False, default_factory=dict)  # shared per group file
    where: str = "diffusers group offload to disk"

    def read(self) -> torch.Tensor:
        from safetensors import safe_open

        pending = self.staged.get(self.group.safetensors_file_path)
        if pending is not None:
            return pending[self.group_key]
        with safe_open(self.group.safetensors_file_path, framework="pt", device="cpu") as handle:
            return handle.get_tensor(self.group_key)

    def write(self, offset: int, values: torch.Tensor) -> None:
        from safetensors.torch import load_file

        path = self.group.safetensors_file_path
        if path not in self.staged:
            self.staged[path] = load_file(path, device="cpu")
        tensor = self.staged[path][self.group_key]
        tensor.view(-1)[offset : offset + values.numel()].copy_(values)

    def finish(self) -> None:
        from safetensors.torch import save_file

        from .atomic import atomic_write

        path = self.group.safetensors_file_path
        tensors = self.staged.pop(path, None)
        if tensors is not None:
            atomic_write(Path(path), lambda tmp: save_file(tensors, tmp))


@dataclass(frozen=True)
class Placement:
    """One way weights can be held. `home` returns a `TensorHome` for a tensor it holds, or None;
    it raises `UnsupportedModelError` for a tensor it holds but cannot update."""

    name: str
    home: Callable[[nn.Module, str, torch.Tensor], TensorHome | None]


def locate(module: nn.Module, keys: Mapping[str, str] | list[str], label: str) -> dict[str, TensorHome]:
    """The home of every state-dict key in `keys`; refuses (before anything is written) any it cannot update."""
    homes: dict[str, TensorHome] = {}
    unreachable: list[str] = []
    context = _Context.of(module)
    for key in keys:
        tensor = _tensor(module, key)
        for placement in PLACEMENTS:
            home = placement.home(context, key, tensor)
            if home is not None:
                homes[key] = home
                break
        else:
            unreachable.append(key)
    if unreachable:
        raise UnsupportedModelError(
            f"{label} has {len(unreachable)} weight(s) with no values make_safe can reach, e.g. {unreachable[:3]} "
            "(on the meta device without an offload hook holding them: not loaded, or offloaded in a way "
            "safe_encoders does not know). Nothing was changed. Load the model fully (or with accelerate / "
            "diffusers offloading), or call make_safe before offloading it."
        )
    return homes


def live_tensors(module: nn.Module, keys: list[str], label: str) -> Iterator[tuple[str, torch.Tensor]]:
    """(key, value the forward uses) for each key, one at a time."""
    homes = locate(module, keys, label)
    for key in keys:
        yield key, homes[key].read()


# ------------------------------------------------------------------------------ placements


@dataclass
class _Context:
    """What the placements need to know about a module, gathered once."""

    module: nn.Module
    groups: dict[int, tuple[Any, str]]  # id(tensor) -> (diffusers ModuleGroup, key in its file)
    staged: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # group file -> tensors being written
    accelerate_hooked: bool = True  # any accelerate hook in the module (else no key needs the walk of its owners)

    @classmethod
    def of(cls, module: nn.Module) -> _Context:
        groups: dict[int, tuple[Any, str]] = {}
        hooked = False
        for sub in module.modules():
            hooked = hooked or getattr(sub, "_hf_hook", None) is not None
            registry = getattr(sub, "_diffusers_hook", None)
            hook = registry.get_hook("group_offloading") if registry is not None else None
            group = getattr(hook, "group", None)
            if group is None:
                continue
            if getattr(group, "stream", None) is not None:
                raise UnsupportedModelError(
                    "The encoder uses diffusers group offloading with CUDA streams (use_stream=True), whose pinned "
                    "CPU copies safe_encoders does not update. Nothing was changed. Call make_safe before "
                    "enable_group_offload, or enable it without use_stream."
                )
            if getattr(group, "offload_to_disk_path", None):
                for tensor, key in group.tensor_to_key.items():
                    groups[id(tensor)] = (group, key)
        return cls(module, groups, accelerate_hooked=hooked)


def _tensor(module: nn.Module, key: str) -> torch.Tensor:
    owner_name, _, local = key.rpartition(".")
    owner = module.get_submodule(owner_name) if owner_name else module
    tensor = owner._parameters.get(local)
    return owner._buffers[local] if tensor is None else tensor


def _offload_hooks(module: nn.Module, key: str) -> Iterator[tuple[Any, str]]:
    """accelerate hooks that rebuild `key` before each forward, with the name they know it by (innermost first)."""
    parts = key.split(".")
    for depth in range(len(parts) - 1, -1, -1):
        owner = module.get_submodule(".".join(parts[:depth])) if depth else module
        hook = getattr(owner, "_hf_hook", None)
        for candidate in getattr(hook, "hooks", None) or ([hook] if hook is not None else []):
            if not getattr(candidate, "offload", False) or getattr(candidate, "weights_map", None) is None:
                continue
            if depth == len(parts) - 1 or getattr(candidate, "place_submodules", False):
                yield candidate, ".".join(parts[depth:])


def _unprefixed(weights_map: Any, name: str) -> tuple[Any, str]:
    from accelerate.utils import PrefixedDataset

    while isinstance(weights_map, PrefixedDataset):
        name = weights_map.prefix + name
        weights_map = weights_map.dataset
    return weights_map, name


def _accelerate_home(context: _Context, key: str, tensor: torch.Tensor) -> TensorHome | None:
    if "accelerate" not in sys.modules or not context.accelerate_hooked:  # no accelerate hook can hold it
        return None
    from accelerate.utils import OffloadedWeightsLoader

    for hook, name in _offload_hooks(context.module, key):
        store, full = _unprefixed(hook.weights_map, name)
        if isinstance(store, OffloadedWeightsLoader):
            if full in store.state_dict:
                return InMemory(key, lambda s=store.state_dict, f=full: s[f], where="accelerate offload (memory)")
            if full in store.index:
                info = store.index[full]
                dtype = getattr(torch, info.get("dtype") or str(tensor.dtype).removeprefix("torch."))
                return DatFile(key, store, full, tuple(tensor.shape), dtype)
        elif isinstance(store, Mapping) and full in store and isinstance(store[full], torch.Tensor):
            if store[full].device.type == "meta":
                return None
            return InMemory(key, lambda s=store, f=full: s[f], where="accelerate offload (memory)")
        elif isinstance(store, Mapping) and full in store:
            raise UnsupportedModelError(
                f"{key} is held by an accelerate offload hook in a {type(store[full]).__name__}; "
                "make_safe cannot update it. Call make_safe before offloading the model."
            )
    return None


def _group_disk_home(context: _Context, key: str, tensor: torch.Tensor) -> TensorHome | None:
    entry = context.groups.get(id(tensor))
    if entry is None:
        return None
    group, group_key = entry
    if not os.path.exists(group.safetensors_file_path):
        raise UnsupportedModelError(
            f"{key} belongs to a diffusers group offloaded to disk whose file {group.safetensors_file_path} does "
            "not exist yet. Nothing was changed. Call make_safe before enable_group_offload(offload_to_disk_path=...)."
        )
    return GroupFile(key, group, group_key, tuple(tensor.shape), tensor.dtype, context.staged)


def _materialised_home(context: _Context, key: str, tensor: torch.Tensor) -> TensorHome | None:
    if tensor.device.type == "meta":
        return None
    owner_name, _, local = key.rpartition(".")
    owner = context.module.get_submodule(owner_name) if owner_name else context.module

    def get(owner: nn.Module = owner, local: str = local) -> torch.Tensor:
        value = owner._parameters.get(local)
        return owner._buffers[local] if value is None else value

    return InMemory(key, get)


PLACEMENTS: list[Placement] = [
    Placement("accelerate offload hooks (cpu_offload, disk_offload, device_map)", _accelerate_home),
    Placement("diffusers group offloading to disk", _group_disk_home),
    Placement("materialised parameters and buffers", _materialised_home),
]


def _numel(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape)) if shape else 1


def _numpy_view(tensor: torch.Tensor) -> np.ndarray:
    """The tensor's bytes as numpy sees them (bfloat16 / float8 as same-width integers, as accelerate stores them)."""
    tensor = tensor.detach().to("cpu").contiguous()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.view(torch.int16)
    elif str(tensor.dtype).startswith("torch.float8_"):
        tensor = tensor.view(torch.int8)
    return tensor.numpy()
