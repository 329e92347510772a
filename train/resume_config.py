"""The resume check of a training run: a checkpoint is resumed only with the config it was written with,
except the settings of :data:`RESUME_FREE_SETTINGS` (where and how often the run reports and saves)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from safe_encoders.errors import SafeEncodersError
from train.config import TrainConfig

RESUME_FREE_SETTINGS: tuple[str, ...] = (
    "output_dir",
    "progress",
    "tensorboard",
    "log_every_steps",
    "save_every_steps",
    "keep_checkpoints",
    "data.num_workers",
)
"""Settings that may change between a checkpoint and its resume (where and how often the run reports and
saves); changing any other setting would make the resumed run differ from an uninterrupted one."""

logger = logging.getLogger(__name__)


class ResumeConfigError(SafeEncodersError, ValueError):
    """The run's config differs from the one its newest checkpoint was written with."""


def _flat_config(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"data.batch_size": 128, ...}`` of a config dict, tuples as lists (as JSON reads them back)."""
    flat: dict[str, Any] = {}
    for key, value in json.loads(json.dumps(data)).items():
        if isinstance(value, dict):
            flat.update(_flat_config(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def check_resume_config(cfg: TrainConfig, checkpoint: Path, saved: dict[str, Any]) -> None:
    """Refuse to resume ``checkpoint`` (its ``saved`` state) with a config that changed (except
    :data:`RESUME_FREE_SETTINGS`)."""
    digest = saved.get("config_digest")
    if digest == cfg.digest():
        return
    advice = (
        f"resume it with the config it was started with (its {Path(cfg.output_dir) / 'config.yaml'} records it), "
        "or start a new run with another output_dir"
    )
    if "config" not in saved:  # written before checkpoints held their config: only the digest can tell
        raise ResumeConfigError(
            f"the config changed since the checkpoint {checkpoint} was written (config digest {digest} there, "
            f"{cfg.digest()} now); {advice}"
        )
    old, new = _flat_config(saved["config"]), _flat_config(cfg.to_dict())
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k, "<absent>") != new.get(k, "<absent>"))
    fixed = [k for k in changed if k not in RESUME_FREE_SETTINGS]
    if fixed:
        details = ", ".join(f"{k}: {old.get(k, '<absent>')!r} -> {new.get(k, '<absent>')!r}" for k in fixed)
        raise ResumeConfigError(
            f"the config changed since the checkpoint {checkpoint} was written ({details}); a resumed run would "
            f"not continue the same training; {advice}"
        )
    logger.warning("resuming %s with changed reporting settings: %s", checkpoint, ", ".join(changed))
