"""What the app has loaded: the pipeline as loaded, a copy made safe, gated copies per policy, HySAC,
and the search index of a scan; and the footer that says so (with the swap verified again)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import AppConfig, AppError

logger = logging.getLogger("safe_encoders.app")

Say = Callable[[str], None]


@dataclass(eq=False)
class AppModels:
    """The loaded models. `lock` serialises model work: the page's events run in threads of their own."""

    config: AppConfig
    hysac: Any
    device: str
    pipe: Any = None
    safe_pipe: Any = None
    scan_folder: str | None = None
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    _gated: dict[tuple[str, str], Any] = field(default_factory=dict, repr=False)
    _indexes: dict[str, Any] = field(default_factory=dict, repr=False)

    def gated(self, prompt_policy: str, image_policy: str) -> tuple[Any, Any]:
        """(pipeline, gate handle) for this policy: a pipeline sharing the loaded one's components, gated and kept
        until another policy is asked for (a "redirect" gate holds its own Safe-CLIP copy of the text encoder)."""
        from ..hysac import SafetyGate, add_safety_gate

        key = (prompt_policy, image_policy)
        if key not in self._gated:
            for _, handle in self._gated.values():
                handle.remove()
            self._gated.clear()
            gate = SafetyGate(
                classifier=self.hysac,
                prompt_policy=prompt_policy,  # type: ignore[arg-type]
                image_policy=image_policy,  # type: ignore[arg-type]
                redirect_checkpoint=self.config.checkpoint,
            )
            pipe = sibling_pipeline(self.pipe)
            pipe.set_progress_bar_config(disable=True)
            self._gated[key] = (pipe, add_safety_gate(pipe, gate))
        return self._gated[key]

    def index(self, folder: str) -> Any:
        """The search index of a scan folder (built once, kept in `<scan>/.search-index/` by `build_index`)."""
        from ..moderation.scan import ScanOutput
        from ..moderation.search import SearchError, build_index

        if folder not in self._indexes:
            path = Path(folder)
            if not path.is_dir():
                raise AppError(f"{folder}: no such folder. Scan a collection first: safe-encoders scan DATA --out "
                               f"{folder} --embeddings.")  # fmt: skip
            if ScanOutput(path).manifest() is None:
                raise SearchError(f"{folder} is not a scan (no .scan.json): safe-encoders scan DATA --out FOLDER "
                                  "--embeddings writes one.")  # fmt: skip
            self._indexes[folder] = build_index(path)
        return self._indexes[folder]


def sibling_pipeline(pipe: Any, **replace: Any) -> Any:
    """A pipeline of the same class over the same components (no copy), with `replace` swapped in."""
    import inspect

    components = {**pipe.components, **replace}
    if "requires_safety_checker" in inspect.signature(type(pipe)).parameters:  # keep what the loaded one had
        components["requires_safety_checker"] = getattr(pipe.config, "requires_safety_checker", True)
    return type(pipe)(**components)


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_models(config: AppConfig, say: Say | None = None) -> AppModels:
    """Load HySAC, the pipeline (and a copy made safe with `config.checkpoint`), and scan the demo's images
    when asked; everything the page shows is ready when this returns."""
    from ..hysac import HySAC
    from ..moderation.scan import prepare_model

    say = say or logger.info
    device = config.device or default_device()
    say(f"loading HySAC from {config.hysac}")
    hysac = prepare_model(HySAC.from_pretrained(config.hysac), device=device)
    if hysac.tokenizer is None or hysac.image_processor is None:
        raise AppError(f"{config.hysac}: the HySAC model has no tokenizer / image processor beside it, so it cannot "
                       "score raw texts and images; save it with them (HySAC.save_pretrained keeps both).")  # fmt: skip
    if hysac.bounds is None:
        raise AppError(f"{config.hysac}: the HySAC model has no bounds, so there are no unsafe thresholds.")
    models = AppModels(config=config, hysac=hysac, device=device)
    if config.model is not None:
        models.pipe, models.safe_pipe = load_pipelines(config, device, say)
    if config.scan is not None:
        if config.scan_images is not None:
            scan_images(models, config.scan_images, config.scan, say)
        models.index(config.scan)
        models.scan_folder = config.scan
    return models


def load_pipelines(config: AppConfig, device: str, say: Say) -> tuple[Any, Any]:
    """The pipeline as loaded, and a sibling with copies of its text encoder(s) made safe (same UNet / VAE)."""
    import copy

    import torch
    from diffusers import DiffusionPipeline

    from ..dispatch import make_safe

    say(f"loading the pipeline {config.model}")
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    pipe = DiffusionPipeline.from_pretrained(config.model, torch_dtype=dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
    encoders = {name: copy.deepcopy(getattr(pipe, name)) for name in ("text_encoder", "text_encoder_2")
                if getattr(pipe, name, None) is not None}  # fmt: skip
    say(f"make_safe with {config.checkpoint}")
    safe_pipe = make_safe(sibling_pipeline(pipe, **encoders), config.checkpoint, allow_partial=True)
    safe_pipe.set_progress_bar_config(disable=True)
    return pipe, safe_pipe


def scan_images(models: AppModels, images: str, out: str, say: Say) -> None:
    """Scan a folder of images into `out` with embeddings (resumes; a finished scan is a no-op)."""
    from ..moderation import InputSpec, ScanConfig, scan

    say(f"scanning {images} into {out}")
    config = ScanConfig(embeddings=True, progress=False, model_name=models.config.hysac, batch_size=16)
    summary = scan(models.hysac, InputSpec(images, kind="folder"), out, config)
    say(f"scan: {summary.written} new rows ({summary.unsafe} unsafe, {summary.errors} unreadable), "
        f"{summary.skipped_done} already there")  # fmt: skip


# ------------------------------------------------------------------------------------------------ footer


def footer_rows(models: AppModels, *, verify: bool = True) -> list[tuple[str, str]]:
    """(what, state) rows: each pipeline's swap record (re-verified against the live weights), HySAC, the scan."""
    from .. import __version__
    from ..dispatch import is_safe

    config = models.config
    rows = [("safe-encoders", f"{__version__}{f' ({config.label})' if config.label else ''}, device {models.device}")]
    if models.pipe is not None:
        rows.append(("pipeline", f"{config.model} ({type(models.pipe).__name__})"))
        rows.append(("as loaded", f"is_safe: {is_safe(models.pipe)}"))
        rows.append(("make_safe", swap_state(models.safe_pipe, verify=verify)))
        if verify:
            try:
                safe = is_safe(models.safe_pipe, verify=True)
            except Exception as error:  # a safety claim we cannot check is not made
                safe = False
                logger.warning("is_safe(verify=True) failed: %s", error)
            rows.append(("make_safe is_safe(verify=True)", str(safe)))
    else:
        rows.append(("pipeline", "none loaded (--model): the Generate tab is off"))
    hysac = models.hysac
    thresholds = ", ".join(f"{m} {hysac.threshold(m):.4f}" for m in ("text", "image") if hysac.bounds.has_threshold(m))
    rows.append(("HySAC", f"{config.hysac}: curvature {float(hysac.curvature.detach()):.4f}, thresholds {thresholds}"))
    scan = models.scan_folder
    rows.append(("scan", f"{scan} ({len(models.index(scan))} items)" if scan else "none (--scan)"))
    return rows


def swap_state(pipe: Any, *, verify: bool) -> str:
    """Per encoder: the checkpoint recorded and, with `verify`, whether the live weights still match it."""
    from ..dispatch import swap_report

    try:
        report = swap_report(pipe, verify=verify)
    except Exception as error:  # the page says it could not verify; it never claims "safe" then
        return f"could not verify ({type(error).__name__}: {error})"
    parts = []
    for label, record in report.items():
        if record is None:
            parts.append(f"{label} not swapped")
            continue
        state = ""
        if verify:
            trusted = f"trusted by {record.get('trusted_by')}"
            state = f", verified ({trusted})" if record.get("verified") else f", NOT verified ({record.get('reason')})"
        parts.append(f"{label} <- {record.get('checkpoint')}{state}")
    return "; ".join(parts) or "no encoder found"
