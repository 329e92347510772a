"""What a live encoder's forward pass really runs: its code path and every tensor it reads, attested.

`attest(module)` returns the problems that make the module something other than a plain transformers
CLIP encoder (an unknown class anywhere in its tree, a child or tensor added, removed or reshaped, an
instance-level `forward` other than accelerate's / diffusers' offload wrappers, a forward or
pre-forward hook, a derived buffer changed), and the digest of every parameter and buffer as the
forward reads it (through offload hooks: `placement.locate`). The tree is compared with a reference
built on the meta device from the same class and config (no memory, no random init).

Cheap repeated checks: a tensor's digest is cached against its identity, storage pointer and
`_version` counter (bumped by every in-place torch op), so an unchanged in-memory encoder is
re-checked without re-hashing it. Writes that bypass the counter (through `.data`, numpy views, or a
file on disk) are only seen by an uncached check (`cached=False`, the default for `is_safe`);
offloaded-to-disk tensors are read afresh every time.
"""

from __future__ import annotations

import contextlib
import functools
import json
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import UnsupportedModelError
from ..format import RECORD_KEY, tensor_digest
from ..placement import locate
from ..sources.encoder_source import CHECK_THREADS
from ..targets import unwrap
from .digests import dtype_name

# The only classes a verified encoder may be (exact class, not a subclass).
ENCODER_CLASSES = ("CLIPTextModel", "CLIPTextModelWithProjection", "CLIPVisionModel", "CLIPVisionModelWithProjection")
# Instance-level forward wrappers of the offloading we know, by the wrapper function's module and qualname.
_ACCELERATE_WRAPPER = ("accelerate.hooks", "add_hook_to_module.<locals>.new_forward")
_DIFFUSERS_WRAPPER = (
    "diffusers.hooks.hooks",
    "HookRegistry.register_hook.<locals>.create_new_forward.<locals>.new_forward",
)
# Hooks those wrappers may run: offloading only (by module and class name).
_ALLOWED_HOOKS = {
    ("accelerate.hooks", "AlignDevicesHook"),
    ("accelerate.hooks", "CpuOffload"),
    ("accelerate.hooks", "SequentialHook"),
    ("diffusers.hooks.group_offloading", "GroupOffloadingHook"),
    ("diffusers.hooks.group_offloading", "LazyPrefetchGroupOffloadingHook"),
    ("diffusers.hooks.group_offloading", "LayerExecutionTrackerHook"),
}
# Buffers the model derives rather than learns: {name suffix: the only value allowed}.
_DERIVED_BUFFERS = {"position_ids": lambda shape: torch.arange(shape[-1]).expand(shape)}


@dataclass
class Attestation:
    """`problems`: (where, what) pairs, empty for a plain encoder; `digests`: {state key: (dtype name, digest)}."""

    problems: list[tuple[str, str]] = field(default_factory=list)
    digests: dict[str, tuple[str, str]] = field(default_factory=dict)


def attest(module: nn.Module, label: str, *, cached: bool = False) -> Attestation:
    """Attest `module` (a CLIP encoder, possibly torch.compile'd or offloaded); see the module docstring."""
    result = Attestation()
    outer, inner = module, unwrap(module)
    result.problems += _global_hooks()
    wrappers = [outer] if outer is not inner else []
    for wrapper in wrappers:
        result.problems += [(f"{label} (torch.compile wrapper)", what) for _, what in _hooks_of(wrapper)]
    result.problems += _class_and_tree(inner)
    for name, sub in inner.named_modules():
        where = name or "(the encoder)"
        result.problems += [(where, what) for _, what in _hooks_of(sub)]
        problem = _forward_override(sub)
        if problem:
            result.problems.append((where, problem))
    if result.problems:
        return result
    try:
        live, in_memory = _live_tensors(inner, label)
    except UnsupportedModelError as error:
        result.problems.append(("(weights)", str(error)))
        return result

    def check(key: str) -> tuple[str, str] | None:
        value = live[key]()
        derived = next((rule for suffix, rule in _DERIVED_BUFFERS.items() if key.endswith(suffix)), None)
        if derived is None:
            return dtype_name(value.dtype), _digest(value, cached)
        expected = derived(tuple(value.shape))
        if value.dtype != expected.dtype or not torch.equal(value.detach().to("cpu"), expected):
            result.problems.append((key, "a derived buffer does not hold its only valid value"))
        return None

    # sha256 releases the GIL: in-memory tensors are hashed on a few threads (offloaded ones one at a time).
    with ThreadPoolExecutor(max_workers=CHECK_THREADS if in_memory else 1) as pool:
        for key, found in zip(live, pool.map(check, live), strict=True):
            if found is not None:
                result.digests[key] = found
    return result


def _live_tensors(module: nn.Module, label: str) -> tuple[dict[str, Any], bool]:
    """({key: () -> the value the forward reads} for every parameter and buffer, whether they are all in memory).
    Without any offload hook the forward reads the tensors themselves (the common case, and the cheap one); else
    `placement.locate` says where."""
    tensors = dict(module.named_parameters())
    tensors.update(module.named_buffers())
    hooked = any("_hf_hook" in sub.__dict__ or "_diffusers_hook" in sub.__dict__ for sub in module.modules())
    if not hooked and not any(tensor.device.type == "meta" for tensor in tensors.values()):
        return {key: (lambda tensor=tensor: tensor) for key, tensor in tensors.items()}, True
    homes = locate(module, list(tensors), label)
    return {key: homes[key].read for key in tensors}, False


# --------------------------------------------------------------------------------------- code paths


def _global_hooks() -> list[tuple[str, str]]:
    from torch.nn.modules import module as torch_module

    names = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_forward_hooks_with_kwargs")
    if any(getattr(torch_module, name, None) for name in names):
        return [("(every module)", "a global forward hook is registered (register_module_forward_hook)")]
    return []


# Hooks of our own safety gate: they read an encoder's inputs, or replace its output by a verified Safe-CLIP's, and
# never change what the encoder computes. Known by identity (the function objects the gate registered), not by name.
_GATE_HOOKS: weakref.WeakSet = weakref.WeakSet()


def allow_gate_hook(hook: Callable[..., Any]) -> Callable[..., Any]:
    """Mark `hook` (a function object) as one of the safety gate's own: attestation does not count it as tampering."""
    _GATE_HOOKS.add(hook)
    return hook


def _hooks_of(sub: nn.Module) -> Iterator[tuple[str, str]]:
    for attribute, what in (("_forward_hooks", "forward hook"), ("_forward_pre_hooks", "forward pre-hook")):
        for hook in getattr(sub, attribute, {}).values():
            if hook in _GATE_HOOKS:
                continue
            yield attribute, f"a {what} is registered ({getattr(hook, '__qualname__', type(hook).__name__)})"


def _class_and_tree(module: nn.Module) -> list[tuple[str, str]]:
    cls = type(module)
    if cls.__name__ not in ENCODER_CLASSES or not cls.__module__.startswith("transformers.models.clip."):
        return [("(the encoder)", f"its class is {cls.__module__}.{cls.__qualname__}, not a transformers CLIP encoder")]
    live = list(_tree(module))
    reference = _reference_tree(cls, module.config)
    for (name, got), (ref_name, want) in zip(live, reference, strict=False):
        if name != ref_name:
            what = f"the module tree differs from {cls.__name__}'s: {name!r} where {ref_name!r} belongs"
            return [(name or ref_name, what)]
        if got != want:
            return [(name or "(the encoder)", f"{got} where a {cls.__name__} has {want}")]
    if len(live) != len(reference):
        extra = live[len(reference)] if len(live) > len(reference) else reference[len(live)]
        what = "added" if len(live) > len(reference) else "missing"
        return [(extra[0], f"{what}: the module tree of a {cls.__name__} with this config does not have it")]
    return []


def _tree(module: nn.Module) -> Iterator[tuple[str, str]]:
    """(qualified name, description) of every module (exact class) and every tensor (shape), in order."""
    for name, sub in module.named_modules(remove_duplicate=False):
        yield name, f"class {type(sub).__module__}.{type(sub).__qualname__}"
        for kind, tensors in (("parameter", sub._parameters), ("buffer", sub._buffers)):
            for local, tensor in tensors.items():
                shape = None if tensor is None else tuple(tensor.shape)
                yield f"{name}.{local}" if name else local, f"{kind} of shape {shape}"


@functools.lru_cache(maxsize=16)
def _reference_tree_cached(cls: type, config_json: str) -> tuple[tuple[str, str], ...]:
    config = cls.config_class.from_dict(json.loads(config_json))
    with torch.device("meta"):
        reference = cls(config)
    return tuple(_tree(reference))


def _reference_tree(cls: type, config: Any) -> list[tuple[str, str]]:
    data = {key: value for key, value in config.to_dict().items() if key != RECORD_KEY}
    return list(_reference_tree_cached(cls, json.dumps(data, sort_keys=True, default=str)))


def _forward_override(sub: nn.Module) -> str | None:
    """Why `sub`'s instance-level forward is not the class's (through known offload wrappers), or None."""
    forward = sub.__dict__.get("forward")
    for _ in range(32):
        if forward is None:
            return None
        if getattr(forward, "__self__", None) is sub and getattr(forward, "__func__", None) is type(sub).forward:
            return None
        if not (isinstance(forward, functools.partial) and forward.args[:1] == (sub,)):
            return f"its forward is replaced on the instance by {_name_of(forward)}"
        wrapper = (getattr(forward.func, "__module__", ""), getattr(forward.func, "__qualname__", ""))
        if wrapper == _ACCELERATE_WRAPPER:
            problem = _check_hook(getattr(sub, "_hf_hook", None))
            if problem:
                return problem
            forward = sub.__dict__.get("_old_forward")
            if forward is None:
                return "an accelerate hook wraps a forward it does not keep"
        elif wrapper == _DIFFUSERS_WRAPPER:
            registry = getattr(sub, "_diffusers_hook", None)
            for hook in getattr(registry, "hooks", {}).values():
                problem = _check_hook(hook)
                if problem:
                    return problem
            reference = _closure(forward.func, "function_reference")
            if reference is None:
                return "a diffusers hook wraps a forward it does not keep"
            forward = reference.original_forward or reference.forward
        else:
            return f"its forward is replaced on the instance by {_name_of(forward)}"
    return "its forward is wrapped too many times"


def _check_hook(hook: Any) -> str | None:
    if hook is None:
        return "an offload wrapper without its hook"
    key = (type(hook).__module__, type(hook).__name__)
    if key not in _ALLOWED_HOOKS:
        return f"a {key[0]}.{key[1]} hook runs around its forward (only offload hooks are allowed)"
    for inner in getattr(hook, "hooks", ()) if key[1] == "SequentialHook" else ():
        problem = _check_hook(inner)
        if problem:
            return problem
    return None


def _closure(function: Any, name: str) -> Any:
    code = getattr(function, "__code__", None)
    if code is None or name not in code.co_freevars:
        return None
    return function.__closure__[code.co_freevars.index(name)].cell_contents


def _name_of(value: Any) -> str:
    target = value.func if isinstance(value, functools.partial) else value
    return f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', type(target).__name__)}"


# --------------------------------------------------------------------------------------- tensors

_CACHE: dict[int, tuple[weakref.ref, tuple[Any, ...], str]] = {}


def _digest(tensor: torch.Tensor, cached: bool) -> str:
    """`format.tensor_digest`, served from the cache when the very same tensor has not changed since."""
    try:
        stamp = (tensor._version, tensor.data_ptr(), tensor.dtype, tensor.shape, tensor.stride(), str(tensor.device))
    except RuntimeError:  # an inference tensor has no version counter: never cached
        return tensor_digest(tensor)
    hit = _CACHE.get(id(tensor))
    if cached and hit is not None and hit[0]() is tensor and hit[1] == stamp:
        return hit[2]
    digest = tensor_digest(tensor)
    key = id(tensor)
    with contextlib.suppress(TypeError):  # a tensor subclass without weak references: not cached
        _CACHE[key] = (weakref.ref(tensor, lambda _: _CACHE.pop(key, None)), stamp, digest)
    return digest
