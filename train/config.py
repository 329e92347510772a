"""Typed run configuration: dataclasses, YAML recipes (``train/recipes/``) and ``key.sub=value`` overrides."""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from safe_encoders.atomic import atomic_write_text
from train.hysac_losses import HYSAC_TERM_NAMES, HySACWeights
from train.losses import DEFAULT_LOGIT_SCALE, TERM_NAMES, SafeClipWeights

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"
CONFIG_VERSION = 1

TEXT_TARGETS = ["k_proj", "v_proj", "out_proj", "fc1", "fc2"]
VISION_TARGETS = [*TEXT_TARGETS, "patch_embedding"]


@dataclass
class LoraSettings:
    rank: int = field(default=16, metadata={"help": "LoRA rank r"})
    alpha: float = field(default=1.0, metadata={"help": "LoRA alpha (scaling = alpha / rank)"})
    dropout: float = field(default=0.1, metadata={"help": "dropout on the LoRA input"})
    text_targets: list[str] = field(default_factory=lambda: list(TEXT_TARGETS))
    vision_targets: list[str] = field(default_factory=lambda: list(VISION_TARGETS))

    def validate(self) -> None:
        if self.rank < 1:
            raise ValueError(f"lora.rank must be >= 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if not self.text_targets and not self.vision_targets:
            raise ValueError("lora: at least one of text_targets / vision_targets must be non-empty")


_Weights = typing.TypeVar("_Weights")


def _weights(cls: type[_Weights], names: Sequence[str], given: dict[str, float], where: str) -> _Weights:
    """``cls`` (a weights dataclass) with its defaults overridden by ``given``; unknown term names refused."""
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise ValueError(f"{where}: unknown term(s) {unknown}; terms are {list(names)}")
    return cls(**{**dataclasses.asdict(cls()), **given})


@dataclass
class LossSettings:
    weights: dict[str, float] = field(
        default_factory=lambda: dataclasses.asdict(SafeClipWeights()),
        metadata={"help": "weights of the eight terms, normalised to sum 1"},
    )
    logit_scale: float = DEFAULT_LOGIT_SCALE

    def safe_clip_weights(self) -> SafeClipWeights:
        return _weights(SafeClipWeights, TERM_NAMES, self.weights, "loss.weights")


@dataclass
class HySACSettings:
    """The HySAC run (``method: hysac``): loss weights and the initial hyperbolic parameters."""

    weights: dict[str, float] = field(
        default_factory=lambda: dataclasses.asdict(HySACWeights()),
        metadata={"help": "weights of the 4 contrastive and 3 entailment terms"},
    )
    curvature: float = field(default=1.0, metadata={"help": "initial curvature c (space of curvature -c)"})
    curvature_range: tuple[float, float] = (0.1, 10.0)
    learn_curvature: bool = True
    logit_scale: float = field(default=1 / 0.07, metadata={"help": "initial (exponentiated) learned logit scale"})
    alpha_init: float | None = field(default=None, metadata={"help": "initial feature scales; None: 1/sqrt(dim)"})
    cone_k: float = field(default=0.1, metadata={"help": "aperture constant K of the entailment cones"})

    def hysac_weights(self) -> HySACWeights:
        return _weights(HySACWeights, HYSAC_TERM_NAMES, self.weights, "hysac.weights")

    def validate(self) -> None:
        self.hysac_weights()
        low, high = self.curvature_range
        if not 0 < low <= self.curvature <= high:
            raise ValueError(
                f"hysac: need 0 < curvature_range[0] <= curvature <= curvature_range[1], got "
                f"{self.curvature} and {self.curvature_range}"
            )
        if self.logit_scale <= 0 or self.cone_k <= 0 or (self.alpha_init is not None and self.alpha_init <= 0):
            raise ValueError("hysac: logit_scale, cone_k and alpha_init must be > 0")


@dataclass
class DataSettings:
    source: str = field(default="synthetic", metadata={"help": "'synthetic' (offline world) or 'visu'"})
    train_size: int = 4000
    val_size: int = 400
    seed: int = 0
    image_size: int = 32
    batch_size: int = 128
    num_workers: int = 0


@dataclass
class OptimSettings:
    optimizer: str = field(default="adam", metadata={"help": "'adam' (Safe-CLIP's release) or 'adamw' (HySAC's)"})
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = field(
        default=0.0, metadata={"help": "not applied to the tensors the model lists in no_weight_decay() (HySAC)"}
    )
    epochs: int = 50
    grad_accum_steps: int = 1
    warmup_steps: int = 0
    schedule: str = field(default="constant", metadata={"help": "'constant' or 'cosine' (after warm-up)"})
    max_grad_norm: float | None = None

    def validate(self) -> None:
        if self.lr <= 0 or self.epochs < 1 or self.grad_accum_steps < 1 or self.warmup_steps < 0:
            raise ValueError(f"optim: need lr > 0, epochs >= 1, grad_accum_steps >= 1, warmup_steps >= 0; got {self}")
        if self.optimizer not in ("adam", "adamw"):
            raise ValueError(f"optim.optimizer must be 'adam' or 'adamw', got {self.optimizer!r}")
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(f"optim.schedule must be 'constant' or 'cosine', got {self.schedule!r}")


@dataclass
class TrainConfig:
    """One Safe-CLIP (or HySAC) run. Defaults are the paper's recipe except the data size and base model."""

    version: int = CONFIG_VERSION
    method: str = field(default="safe-clip", metadata={"help": "'safe-clip', 'hysac' or 'clip' (loss, model, export)"})
    base_model: str = field(
        default="openai/clip-vit-large-patch14", metadata={"help": "Hub id or local folder of a transformers CLIPModel"}
    )
    output_dir: str = "out/safeclip"
    seed: int = 0
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
    patience: int = 5
    save_every_steps: int = field(default=0, metadata={"help": "extra mid-epoch checkpoints (0: per epoch only)"})
    keep_checkpoints: int = 2
    log_every_steps: int = 1
    progress: bool = True
    tensorboard: bool = True

    def validate(self) -> None:
        self.lora.validate()
        self.optim.validate()
        self.loss.safe_clip_weights()
        self.hysac.validate()
        from train.methods import METHODS  # the table imports this module

        if self.method not in METHODS:
            raise ValueError(f"method must be one of {list(METHODS)}, got {self.method!r}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"mixed_precision must be 'no', 'fp16' or 'bf16', got {self.mixed_precision!r}")
        if self.early_stopping_mode not in ("min", "max"):
            raise ValueError(f"early_stopping_mode must be 'min' or 'max', got {self.early_stopping_mode!r}")
        if self.patience < 1 or self.data.batch_size < 1 or self.keep_checkpoints < 1:
            raise ValueError("patience, data.batch_size and keep_checkpoints must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def digest(self) -> str:
        """sha256 of the canonical JSON of the config (stamped into checkpoints and exports)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True, default=list).encode()).hexdigest()


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    if not isinstance(values, dict):
        raise ValueError(f"config {where or 'root'}: expected a mapping, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {names}"
            raise ValueError(f"config: unknown key {where + key!r}{hint}")
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
    raise ValueError(f"config: {name} must be {hint}, got {value!r}")


def _apply_override(data: dict[str, Any], override: str) -> None:
    if "=" not in override:
        raise ValueError(f"override {override!r} must look like key.sub=value")
    key, raw = override.split("=", 1)
    node = data
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"override {override!r}: {part!r} is not a section")
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
