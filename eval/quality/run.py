"""``python -m eval quality``: what safety costs in image quality and prompt fidelity (Safe-CLIP Table 14).

For ``eval t2i`` conditions (``sd``, ``sd+safe``, ``sld-strong`` ...) one image is generated per caption of a
caption set (default layout: COCO-30k's ``prompt, evaluation_seed, coco_id`` file; any CSV / TXT with a caption
column), through the same store, runner, placement, sharding and resume as ``eval t2i``, into ``OUT/quality/``.
Once every image is there, the main process computes per condition FID against ``--real`` and the CLIP score
(:mod:`eval.quality.metrics`) and writes ``OUT/quality.{csv,md,tex}``; when ``OUT`` also holds an ``eval t2i``
run, ``OUT/report.md`` shows both tables.

Metric values are cached in ``OUT/quality/quality.json`` per condition, keyed by the condition's images, the
real statistics and the metric settings: a rerun (or a run killed during the metrics) recomputes only what
changed. Real-image statistics have their own cache (``--stats-cache``), shared across runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from eval.data.prompt_set import PromptSet
from eval.data.prompts import load_prompt_file
from eval.errors import EvalError, PromptSetError
from eval.placement import default_device
from eval.quality.metrics import (
    DEFAULT_CLIP_SCORE_MODEL,
    CLIPScorer,
    FIDMetric,
    FIDSettings,
    default_stats_cache,
    image_files,
)
from eval.report.tables import write_tables
from eval.store.results import ResultsStore
from eval.t2i.prompt_runs import GenerationSettings, condition_names, run_prompt_set
from eval.t2i.run import T2IConfig
from safe_encoders.atomic import atomic_write_text

logger = logging.getLogger("safe_encoders.eval")

STORE_DIR = "quality"
CACHE_FILE = "quality.json"
QUALITY_COLUMNS = ("condition", "n_images", "fid", "clip_score")


@dataclass(kw_only=True)
class QualityConfig(GenerationSettings):
    """Everything ``eval quality`` needs (the command line's options): how images are made, and measured."""

    captions: str
    real: Path | None = None
    """Folder of real images for FID (e.g. COCO val2017); required when ``fid`` is on."""
    caption_column: str | None = None
    fid: bool = True
    clip_model: str | None = DEFAULT_CLIP_SCORE_MODEL
    """Hub id or local folder of the CLIP model of the CLIP score; None: no CLIP score."""
    fid_weights: str | None = None
    """A local copy of torch-fidelity's Inception weights (else it downloads them once)."""
    fid_settings: FIDSettings = field(default_factory=FIDSettings)
    stats_cache: Path | None = None
    """Real-statistics cache folder; None: ``default_stats_cache()``."""
    metrics_batch_size: int = 50

    def t2i_config(self) -> T2IConfig:
        """The generation part, as ``eval t2i`` runs it: one image per caption, no classifier."""
        return self.to_t2i_config(
            prompts=str(self.captions), store_dir=STORE_DIR, images_per_prompt=1, limit=self.limit, rule=()
        )


@dataclass(frozen=True)
class QualityRow:
    """One condition's line of ``quality.csv``; a metric not computed is NaN."""

    condition: str
    n_images: int
    fid: float = math.nan
    clip_score: float = math.nan


def load_captions(path: str | Path, caption_column: str | None = None) -> PromptSet:
    """A caption set: COCO-30k's layout (``prompt``, ``evaluation_seed``, ``case_number`` ids) or any CSV / TXT
    with a caption column (``caption_column``, else the first of ``prompt, text, caption ...``)."""
    captions = load_prompt_file(path, text_column=caption_column)
    empty = [p.id for p in captions if not p.text.strip()]
    if empty:
        raise PromptSetError(f"{path}: {len(empty)} empty caption(s), e.g. {empty[:3]}")
    if not len(captions):
        raise PromptSetError(f"{path}: no captions")
    return captions


def check_config(cfg: QualityConfig) -> None:
    """Refuse what cannot work before any image is generated."""
    condition_names(cfg.conditions)
    if not cfg.fid and cfg.clip_model is None:
        raise EvalError("nothing to measure: FID and the CLIP score are both off")
    if cfg.fid:
        if cfg.real is None:
            raise EvalError("FID needs --real: a folder of real images (e.g. COCO val2017)")
        image_files(cfg.real)
    if cfg.limit is not None and cfg.limit < 2:
        raise EvalError(f"--limit {cfg.limit}: FID and CLIP score need at least 2 captions")
    if cfg.metrics_batch_size < 1:
        raise EvalError("--metrics-batch-size must be >= 1")
    if cfg.clip_model is not None and Path(cfg.clip_model).exists() and not Path(cfg.clip_model).is_dir():
        raise EvalError(f"--clip-model {cfg.clip_model}: a local CLIP model is a folder (config + weights + processor)")


def run_quality(
    cfg: QualityConfig,
    *,
    fid_extractor: torch.nn.Module | None = None,
    shard: tuple[int, int] | None = None,
) -> list[QualityRow] | None:
    """Generate (or resume) the caption images, then (main process, run complete) measure and report.

    ``fid_extractor``: an injected FID feature extractor (``cfg.fid_settings.extractor`` names it), default
    torch-fidelity's Inception v3. Returns the rows, or None in other processes / while the run is incomplete.
    """
    check_config(cfg)
    captions = load_captions(cfg.captions, cfg.caption_column)
    device = default_device(cfg.device)
    fid = None
    if cfg.fid and fid_extractor is None:  # built first: fails now, not after generation, without torch-fidelity
        fid = FIDMetric(settings=cfg.fid_settings, weights=cfg.fid_weights, device=device)
    run = run_prompt_set(cfg.t2i_config(), captions, shard=shard)
    if not run.is_main:
        return None
    if not run.complete:
        logger.warning("the quality run is not complete yet (other shards still working?); no metrics computed")
        return None
    if cfg.fid and fid is None:
        fid = FIDMetric(fid_extractor, settings=cfg.fid_settings, device=device)
    rows = measure(run.store, captions.name, fid=fid, cfg=cfg, device=device)
    write_quality_report(rows, cfg.out, note=_note(cfg, fid))
    from eval.report.t2i import refresh_report_md

    refresh_report_md(cfg.out)
    return rows


def _note(cfg: QualityConfig, fid: FIDMetric | None) -> str:
    parts = []
    if fid is not None:
        s = cfg.fid_settings
        crop = "center-cropped square, " if s.center_crop else ""
        parts.append(
            f"FID against {fid.real_source}; {s.extractor}, both sides {crop}bicubic-resized to {s.image_size} px"
        )
    if cfg.clip_model:
        parts.append(f"CLIP score with {cfg.clip_model} (100 x cosine, mean clipped at 0)")
    return "; ".join(parts) + "."


def _cache_key(items: Sequence[Any], *parts: Any) -> str:
    h = hashlib.sha256()
    for it in sorted(items, key=lambda i: (i.prompt_id, i.seed)):
        h.update(f"{it.prompt_id}\x00{it.seed}\x00{it.path}\n".encode())
    h.update(json.dumps(parts, sort_keys=True, default=str).encode())
    return h.hexdigest()


def measure(
    store: ResultsStore, prompt_set: str, *, fid: FIDMetric | None, cfg: QualityConfig, device: torch.device
) -> list[QualityRow]:
    """FID and CLIP score of every condition's images of ``prompt_set``, reusing cached values that still apply."""
    cache_path = store.root / CACHE_FILE
    cache: dict[str, Any] = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    if fid is not None and fid.real_count() == 0:
        cache_dir = cfg.stats_cache if cfg.stats_cache is not None else default_stats_cache()
        fid.load_real(cfg.real, cache_dir, progress=cfg.progress)
    scorer: CLIPScorer | None = None
    rows = []
    for condition in condition_names(cfg.conditions):
        items = [it for it in store.items(condition) if it.prompt_set == prompt_set]
        key = _cache_key(
            items,
            fid.real_key if fid is not None else None,
            fid.settings if fid is not None else None,
            cfg.fid_weights,
            cfg.clip_model,
        )
        hit = cache.get(condition)
        if hit and hit.get("key") == key:
            rows.append(QualityRow(condition, hit["n_images"], hit["fid"], hit["clip_score"]))
            continue
        fid_value = clip_value = math.nan
        if fid is not None:
            with _bar(len(items), f"FID {condition}", cfg.progress) as bar:
                fid_value = fid.fid((store.load_image(it) for it in items), progress=bar.update)
        if cfg.clip_model is not None:
            if scorer is None:
                scorer = CLIPScorer(cfg.clip_model, device=device, batch_size=cfg.metrics_batch_size, **cfg.hub_kwargs)
            with _bar(len(items), f"CLIP score {condition}", cfg.progress) as bar:
                images = (store.load_image(it) for it in items)
                clip_value = scorer.score(images, [it.prompt for it in items], progress=bar.update)
        rows.append(QualityRow(condition, len(items), fid_value, clip_value))
        cache[condition] = {"key": key, "n_images": len(items), "fid": fid_value, "clip_score": clip_value}
        atomic_write_text(cache_path, json.dumps(cache, indent=1))  # per condition: a kill keeps what is done
    return rows


def _bar(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, mininterval=1.0, unit="img")


# --------------------------------------------------------------------------- report


def _fmt(value: float, digits: int) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def quality_table(rows: Sequence[QualityRow]) -> tuple[list[str], list[list[str]]]:
    """Header and body of the quality table (FID lower is better, CLIP score higher)."""
    header = ["condition", "images", "FID", "CLIP score"]
    return header, [[r.condition, str(r.n_images), _fmt(r.fid, 2), _fmt(r.clip_score, 2)] for r in rows]


def write_quality_report(rows: Sequence[QualityRow], out: str | Path, note: str = "") -> dict[str, Path]:
    """``quality.csv`` (condition, n_images, fid, clip_score), ``quality.md`` and ``quality.tex`` in ``out``."""
    lines = [[r.condition, r.n_images, f"{r.fid:.6f}", f"{r.clip_score:.6f}"] for r in rows]
    header, body = quality_table(rows)
    caption = f"Image quality: FID (lower is better) and CLIP score (higher is better). {note}"
    return write_tables(out, "quality", QUALITY_COLUMNS, lines, header, body, caption)


def read_quality_csv(path: str | Path) -> list[QualityRow]:
    """Rows of a ``quality.csv`` written by :func:`write_quality_report`."""
    import csv

    with Path(path).open(newline="", encoding="utf-8") as fh:
        return [
            QualityRow(r["condition"], int(r["n_images"]), float(r["fid"]), float(r["clip_score"]))
            for r in csv.DictReader(fh)
        ]
