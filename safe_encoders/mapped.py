"""Weights installed as a private memory map of the checked checkpoint file, as `from_pretrained` leaves a model.

For a weight the forward reads as a plain CPU parameter or buffer, stored in the checkpoint in its
own dtype, make_safe writes no byte: the parameter is pointed at its slice of a private
(copy-on-write, MAP_PRIVATE) memory map of the safetensors file `EncoderSource.validate` checked,
the way transformers loads a model. The file is opened and mapped only if it still has the identity
it had when its check began (device, inode, size, mtime, ctime), so the mapped bytes are the checked
ones; the open file is the one mapped, so a rename cannot slip another file in between. Each weight
gets a storage of its own (a slice of the mapping's, which keeps the mapping, and so the file's
inode, alive), as safetensors' loader gives. Pages are read from the page cache when the forward
first reads them; as with any model transformers loads, a later write to the file can change what
the forward reads (`is_safe(verify=True)` re-hashes the live weights and sees it).

The tensors a weight held before are kept, not copied, and `Remapped.restore` puts them back: bit for
bit by construction. A weight whose storage is shared (tied weights, a view of a larger tensor) or
that is offloaded, cast, or not on the CPU is left to the copying path.
"""

from __future__ import annotations

import mmap
import os
from collections import Counter
from itertools import chain
from pathlib import Path

import torch
from torch import nn

from .errors import SwapVerificationError
from .placement import InMemory, TensorHome
from .streaming import Span, file_identity

ENABLED = True  # False: every weight is copied into the memory it already has (tests of the copying path)


class CheckpointMaps:
    """One private memory map per checkpoint file, made only while the file is still the one that was checked."""

    def __init__(self) -> None:
        self._storages: dict[Path, torch.UntypedStorage | None] = {}  # None: the file cannot be mapped

    def tensor(self, span: Span, identity: tuple[int, ...] | None) -> torch.Tensor | None:
        """Tensor `span` of its file as a view of the file's private map (a storage of its own), or None if the
        file cannot be memory-mapped; refuses a file whose identity is no longer `identity` (the one it had
        when it was checked)."""
        if span.path not in self._storages:
            self._storages[span.path] = _map_private(span.path, identity)
        storage = self._storages[span.path]
        if storage is None:
            return None
        piece = storage[span.start : span.end]  # shares the mapping and holds a reference to it
        return torch.empty(0, dtype=torch.uint8).set_(piece).view(span.dtype).view(span.shape)

    def close(self) -> None:
        self._storages.clear()  # the weights that use a mapping keep it alive


def _map_private(path: Path, identity: tuple[int, ...] | None) -> torch.UntypedStorage | None:
    fd = os.open(path, os.O_RDONLY)
    try:
        if identity is None or file_identity(fd) != identity:
            raise SwapVerificationError(
                f"{path} changed after make_safe checked it (before it was mapped); the original weights were "
                "restored. Call make_safe again once nothing writes the checkpoint."
            )
        try:
            mapping = mmap.mmap(fd, 0, access=mmap.ACCESS_COPY)  # MAP_PRIVATE: a write lands in our own page
        except (OSError, ValueError):  # a file system without memory maps: the weights are copied instead
            return None
    finally:
        os.close(fd)  # the mapping holds the file (mmap keeps a duplicate descriptor)
    return torch.frombuffer(mapping, dtype=torch.uint8).untyped_storage()  # the storage holds `mapping`


class Remapped:
    """Weights pointed at their checkpoint's private map, with the tensors they held before."""

    def __init__(self) -> None:
        self.maps = CheckpointMaps()
        self._old: list[tuple[nn.Module, str, torch.Tensor]] = []  # owner, local name, the tensor held before
        self._sole: dict[int, set[str]] = {}  # id(module) -> keys whose tensor alone fills its own storage

    def put(
        self, module: nn.Module, key: str, home: TensorHome, span: Span, identity: tuple[int, ...] | None
    ) -> torch.Tensor | None:
        """Point weight `key` of `module` (read by the forward through `home`) at `span` of its file's private
        map and return the mapped tensor; None, with nothing changed, for a weight this cannot serve."""
        if not ENABLED or not isinstance(home, InMemory) or home.where != "parameter":
            return None  # offloaded: the forward reads a copy kept elsewhere
        live = home.read()
        if (
            live.device.type != "cpu"
            or not live.is_contiguous()
            or live.dtype != span.dtype
            or tuple(live.shape) != tuple(span.shape)
            or live.numel() == 0
            or span.start % live.element_size()
            or key not in self._sole_keys(module)
        ):
            return None
        mapped = self.maps.tensor(span, identity)
        if mapped is None:
            return None
        owner_name, _, local = key.rpartition(".")
        owner = module.get_submodule(owner_name) if owner_name else module
        parameter = owner._parameters.get(local)
        with torch.no_grad():
            if parameter is not None:
                self._old.append((owner, local, parameter.data))  # kept first: a restore can always put it back
                parameter.data = mapped  # the same Parameter object: hooks, optimisers and the module tree see it
            else:
                self._old.append((owner, local, owner._buffers[local]))
                owner._buffers[local] = mapped
        return mapped

    def _sole_keys(self, module: nn.Module) -> set[str]:
        """Keys of `module`'s CPU tensors that are the only tensor of the module on their storage and fill it whole
        (not tied to another name, not a view of something larger: writing in place keeps those ties, replacing
        the tensor would break them); taken before the first change to `module`."""
        if id(module) not in self._sole:
            named = list(
                chain(module.named_parameters(remove_duplicate=False), module.named_buffers(remove_duplicate=False))
            )
            on_cpu = [(name, tensor) for name, tensor in named if tensor.device.type == "cpu"]
            users = Counter(tensor.untyped_storage().data_ptr() for _, tensor in on_cpu)
            self._sole[id(module)] = {
                name
                for name, tensor in on_cpu
                if users[tensor.untyped_storage().data_ptr()] == 1
                and tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()
            }
        return self._sole[id(module)]

    def restore(self) -> None:
        """Put back every tensor `put` replaced, the last first."""
        with torch.no_grad():
            for owner, local, old in reversed(self._old):
                parameter = owner._parameters.get(local)
                if parameter is not None:
                    parameter.data = old
                else:
                    owner._buffers[local] = old
        self._old.clear()

    def close(self) -> None:
        """Release the tensors held before (after success: the mapped weights hold the maps)."""
        self._old.clear()
        self._sole.clear()
        self.maps.close()
