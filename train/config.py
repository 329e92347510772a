"""Typed run configuration: dataclasses, YAML recipes (``train/recipes/``) and ``key.sub=value`` overrides."""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from safe_encoders.atomic import atomic_write_text
from safe_encoders.errors import SafeEncodersError
from train.hysac_losses import HYSAC_TERM_NAMES, HySACWeights
from train.losses import DEFAULT_LOGIT_SCALE, TERM_NAMES, SafeClipWeights

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"
CONFIG_VERSION = 1

TEXT_TARGETS = ["k_proj", "v_proj", "out_proj", "fc1", "fc2"]
VISION_TARGETS = [*TEXT_TARGETS, "patch_embedding"]


class TrainConfigError(SafeEncodersError, ValueError):
    """A training config value has the wrong type or lies outside its range (the command line prints one line)."""


@dataclass(frozen=True)
class Range:
    """The values a numeric setting (or each element of a tuple setting) may take: finite, between the bounds.

    Declared in a field's metadata (``metadata={"range": POSITIVE}``) and checked by :func:`check_ranges`."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def holds(self, value: Any, integer: bool) -> bool:
        if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
            return False
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def __str__(self) -> str:
        low, high = _number(self.low), _number(self.high)
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {low}"
        return f"in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"


def _number(value: float | None) -> str:
    if value is None:
        return ""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


POSITIVE = Range(0, low_open=True)
NON_NEGATIVE = Range(0)
AT_LEAST_ONE = Range(1)
FRACTION = Range(0, 1, high_open=True)
SEED = Range(0, 2**31, high_open=True)  # numpy takes seeds < 2**32; each process adds its rank


def _ranged(default: Any = dataclasses.MISSING, allowed: Range = POSITIVE, **metadata: Any) -> Any:
    """A dataclass field whose value :func:`check_ranges` checks against ``allowed``."""
    return field(default=default, metadata={"range": allowed, **metadata})


def check_ranges(settings: Any, prefix: str = "") -> None:
    """Refuse (TrainConfigError) a field of the dataclass ``settings`` outside the Range of its metadata: NaN,
    infinities, a bool or a string for a number, a float for an integer, a value past a bound."""
    hints = typing.get_type_hints(type(settings))
    for f in dataclasses.fields(settings):
        allowed = f.metadata.get("range")
        if allowed is None:
            continue
        name, value, hint = prefix + f.name, getattr(settings, f.name), hints[f.name]
        kinds = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
        if value is None and type(None) in kinds:
            continue
        if typing.get_origin(hint) is tuple:
            elements = typing.get_args(hint)
            if not isinstance(value, (tuple, list)) or len(value) != len(elements):
                raise TrainConfigError(f"config: {name} must hold {len(elements)} numbers, got {value!r}")
            values, integer = list(value), elements[0] is int
        else:
            values, integer = [value], int in kinds and float not in kinds
        for v in values:
            if not allowed.holds(v, integer):
                kind = "an integer" if integer else "a finite number"
                raise TrainConfigError(f"config: {name} must be {allowed} ({kind}), got {value!r}")


@dataclass
class LoraSettings:
    rank: int = _ranged(16, AT_LEAST_ONE, help="LoRA rank r")
    alpha: float = _ranged(1.0, POSITIVE, help="LoRA alpha (scaling = alpha / rank)")
    dropout: float = _ranged(0.1, FRACTION, help="dropout on the LoRA input")
    text_targets: list[str] = field(default_factory=lambda: list(TEXT_TARGETS))
    vision_targets: list[str] = field(default_factory=lambda: list(VISION_TARGETS))

    def validate(self) -> None:
        check_ranges(self, "lora.")
        if not self.text_targets and not self.vision_targets:
            raise TrainConfigError("lora: at least one of text_targets / vision_targets must be non-empty")


_Weights = typing.TypeVar("_Weights")


def _weights(cls: type[_Weights], names: Sequence[str], given: dict[str, float], where: str) -> _Weights:
    """``cls`` (a weights dataclass) with its defaults overridden by ``given``; unknown term names refused."""
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise TrainConfigError(f"{where}: unknown term(s) {unknown}; terms are {list(names)}")
    try:
        return cls(**{**dataclasses.asdict(cls()), **given})
    except ValueError as error:  # the weights' own check: finite, >= 0, not all zero
        raise TrainConfigError(f"{where}: {error}") from error


@dataclass
class LossSettings:
    weights: dict[str, float] = field(
        default_factory=lambda: dataclasses.asdict(SafeClipWeights()),
        metadata={"help": "weights of the eight terms, normalised to sum 1"},
    )
    logit_scale: float = _ranged(DEFAULT_LOGIT_SCALE, POSITIVE)

    def validate(self) -> None:
        check_ranges(self, "loss.")
        self.safe_clip_weights()

    def safe_clip_weights(self) -> SafeClipWeights:
        return _weights(SafeClipWeights, TERM_NAMES, self.weights, "loss.weights")


@dataclass
class HySACSettings:
    """The HySAC run (``method: hysac``): loss weights and the initial hyperbolic parameters."""

    weights: dict[str, float] = field(
        default_factory=lambda: dataclasses.asdict(HySACWeights()),
        metadata={"help": "weights of the 4 contrastive and 3 entailment terms"},
    )
    curvature: float = _ranged(1.0, POSITIVE, help="initial curvature c (space of curvature -c)")
    curvature_range: tuple[float, float] = _ranged((0.1, 10.0), POSITIVE)
    learn_curvature: bool = True
    logit_scale: float = _ranged(1 / 0.07, POSITIVE, help="initial (exponentiated) learned logit scale")
    alpha_init: float | None = _ranged(None, POSITIVE, help="initial feature scales; None: 1/sqrt(dim)")
    cone_k: float = _ranged(0.1, POSITIVE, help="aperture constant K of the entailment cones")

    def hysac_weights(self) -> HySACWeights:
        return _weights(HySACWeights, HYSAC_TERM_NAMES, self.weights, "hysac.weights")

    def validate(self) -> None:
        check_ranges(self, "hysac.")
        self.hysac_weights()
        low, high = self.curvature_range
        if not 0 < low <= self.curvature <= high:
            raise TrainConfigError(
                f"hysac: need 0 < curvature_range[0] <= curvature <= curvature_range[1], got "
                f"{self.curvature} and {self.curvature_range}"
            )


@dataclass
class DataSettings:
    source: str = field(default="synthetic", metadata={"help": "'synthetic' (offline world) or 'visu'"})
    train_size: int = _ranged(4000, AT_LEAST_ONE)
    val_size: int = _ranged(400, AT_LEAST_ONE)
    seed: int = _ranged(0, SEED)
    image_size: int = _ranged(32, AT_LEAST_ONE)
    batch_size: int = _ranged(128, AT_LEAST_ONE)
    num_workers: int = _ranged(0, NON_NEGATIVE)

    def validate(self) -> None:
        check_ranges(self, "data.")


@dataclass
class OptimSettings:
    optimizer: str = field(default="adam", metadata={"help": "'adam' (Safe-CLIP's release) or 'adamw' (HySAC's)"})
    lr: float = _ranged(1e-3, POSITIVE)
    betas: tuple[float, float] = _ranged((0.9, 0.999), FRACTION)
    weight_decay: float = _ranged(
        0.0, NON_NEGATIVE, help="not applied to the tensors the model lists in no_weight_decay() (HySAC)"
    )
    epochs: int = _ranged(50, AT_LEAST_ONE)
    grad_accum_steps: int = _ranged(1, AT_LEAST_ONE)
    warmup_steps: int = _ranged(0, NON_NEGATIVE)
    schedule: str = field(default="constant", metadata={"help": "'constant' or 'cosine' (after warm-up)"})
    max_grad_norm: float | None = _ranged(None, POSITIVE, help="clip the gradient norm (None: no clipping)")

    def validate(self) -> None:
        check_ranges(self, "optim.")
        if self.optimizer not in ("adam", "adamw"):
            raise TrainConfigError(f"optim.optimizer must be 'adam' or 'adamw', got {self.optimizer!r}")
        if self.schedule not in ("constant", "cosine"):
            raise TrainConfigError(f"optim.schedule must be 'constant' or 'cosine', got {self.schedule!r}")


@dataclass
class TrainConfig:
    """One Safe-CLIP (or HySAC) run. Defaults are the paper's recipe except the data size and base model."""

    version: int = CONFIG_VERSION
    method: str = field(default="safe-clip", metadata={"help": "'safe-clip', 'hysac' or 'clip' (loss, model, export)"})
    base_model: str = field(
        default="openai/clip-vit-large-patch14", metadata={"help": "Hub id or local folder of a transformers CLIPModel"}
    )
    output_dir: str = "out/safeclip"
    seed: int = _ranged(0, SEED)
    mixed_precision: str = field(default="no", metadata={"help": "'no', 'fp16' or 'bf16' (accelerate)"})
    lora: LoraSettings = field(default_factory=LoraSettings)
    loss: LossSettings = field(default_factory=LossSettings)
    hysac: HySACSettings = field(default_factory=HySACSettings)
    data: DataSettings = field(default_factory=DataSettings)
    optim: OptimSettings = field(default_factory=OptimSettings)
    cache_references: bool = field(
        default=True,
        metadata={
            "help": "embed the safe texts/images with the frozen encoders once; off -> adapter-disabled forwards"
        },
    )
    early_stopping_metric: str = "val_loss"
    early_stopping_mode: str = "min"
    patience: int = _ranged(5, AT_LEAST_ONE)
    save_every_steps: int = _ranged(0, NON_NEGATIVE, help="extra mid-epoch checkpoints (0: per epoch only)")
    keep_checkpoints: int = _ranged(2, AT_LEAST_ONE)
    log_every_steps: int = _ranged(1, AT_LEAST_ONE)
    progress: bool = True
    tensorboard: bool = True

    def validate(self) -> None:
        """Check every value before anything runs (TrainConfigError): a NaN learning rate must not reach torch."""
        check_ranges(self)
        self.lora.validate()
        self.optim.validate()
        self.loss.validate()
        self.hysac.validate()
        self.data.validate()
        from train.methods import METHODS  # the table imports this module

        if self.method not in METHODS:
            raise TrainConfigError(f"method must be one of {list(METHODS)}, got {self.method!r}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise TrainConfigError(f"mixed_precision must be 'no', 'fp16' or 'bf16', got {self.mixed_precision!r}")
        if self.early_stopping_mode not in ("min", "max"):
            raise TrainConfigError(f"early_stopping_mode must be 'min' or 'max', got {self.early_stopping_mode!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def digest(self) -> str:
        """sha256 of the canonical JSON of the config (stamped into checkpoints and exports)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True, default=list).encode()).hexdigest()


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    if not isinstance(values, dict):
        raise TrainConfigError(f"config {where or 'root'}: expected a mapping, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {names}"
            raise TrainConfigError(f"config: unknown key {where + key!r}{hint}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value, f"{where}{key}.")
        elif typing.get_origin(hint) is tuple and isinstance(value, list):
            kwargs[key] = tuple(value)
        else:
            kwargs[key] = _coerce(value, hint, where + key)
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, name: str) -> Any:
    """Check scalars against their annotation; YAML reads ``3e-4`` as a string, so floats accept those."""
    allowed = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if value is None and type(None) in allowed:
        return None
    if float in allowed and isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            return float(value)
        except ValueError:
            pass
    for kind in (bool, int, str):
        if kind in allowed and isinstance(value, kind) and (kind is bool or not isinstance(value, bool)):
            return value
    if not any(k in allowed for k in (bool, int, float, str)):
        return value  # containers: taken as given
    raise TrainConfigError(f"config: {name} must be {hint}, got {value!r}")


def _apply_override(data: dict[str, Any], override: str) -> None:
    if "=" not in override:
        raise TrainConfigError(f"override {override!r} must look like key.sub=value")
    key, raw = override.split("=", 1)
    node = data
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise TrainConfigError(f"override {override!r}: {part!r} is not a section")
    node[parts[-1]] = yaml.safe_load(raw)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Read a YAML recipe (a path, or a name in ``train/recipes/``), apply overrides, validate.

    Overrides are ``key.sub=value`` strings whose value is parsed as YAML (``optim.lr=3e-4``,
    ``lora.text_targets=[k_proj,v_proj]``).
    """
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.exists() and (RECIPES_DIR / f"{path}.yaml").exists():
            p = RECIPES_DIR / f"{path}.yaml"
        if not p.exists():
            known = sorted(q.stem for q in RECIPES_DIR.glob("*.yaml"))
            raise FileNotFoundError(f"load_config: no file {str(path)!r} and no recipe of that name; recipes: {known}")
        data = yaml.safe_load(p.read_text()) or {}
    for override in overrides:
        _apply_override(data, override)
    cfg = _build(TrainConfig, data, "")
    cfg.validate()
    return cfg


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    """Write ``cfg`` as YAML (round-trips through :func:`load_config`)."""
    data = json.loads(json.dumps(cfg.to_dict()))  # tuples -> lists
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))
