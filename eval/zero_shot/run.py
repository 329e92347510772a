"""Run clip_benchmark's zero-shot classification / retrieval for each (model, dataset) and write
``zero_shot.{csv,md,tex}``: one row per model and dataset, each metric with its difference to the baseline (the
original CLIP) beside it. The metrics are clip_benchmark's own (``clip_benchmark.metrics.zeroshot_classification``
and ``zeroshot_retrieval``, imported alone: they need neither torchvision nor open_clip)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from eval.report.tables import write_tables
from eval.zero_shot.data import DatasetSpec
from eval.zero_shot.models import LorentzAsCosine, ZeroShotError, ZeroShotModel, lorentz_radius

logger = logging.getLogger("safe_encoders.eval")

CLASSIFICATION_METRICS: tuple[str, ...] = ("acc1", "acc5", "mean_per_class_recall")


def retrieval_metrics(recall_k: Sequence[int]) -> tuple[str, ...]:
    return tuple(f"{side}_retrieval_recall@{k}" for k in recall_k for side in ("image", "text"))


@dataclass
class ZeroShotConfig:
    out: Path
    batch_size: int = 64
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    amp: bool = False
    recall_k: tuple[int, ...] = (1, 5, 10)
    baseline: str | None = None
    """The model the differences are taken to (default: the first model)."""


@dataclass(frozen=True)
class ZeroShotRow:
    model: str
    kind: str
    dataset: str
    task: str
    metrics: dict[str, float]


def _texts(dataset, loader, task: str) -> list[str]:
    """Every text the metric will encode (for HySAC's radius pass)."""
    if task == "zeroshot_retrieval":
        return [caption for _, per_image in loader for captions in per_image for caption in captions]
    templates = dataset.templates
    if isinstance(templates, dict):
        return [t for texts in templates.values() for t in texts]
    return [t.format(c=c) for c in dataset.classes for t in templates]


def _topk_accuracy(output: torch.Tensor, target: torch.Tensor, topk: Sequence[int] = (1,)) -> list[float]:
    """Share of rows whose target is among the ``k`` largest logits, for each ``k`` (clip_benchmark's ``accuracy``
    contract; see :func:`numpy2_compatible`)."""
    top = output.topk(max(topk), dim=1).indices
    hit = top == target.view(-1, 1)
    return [hit[:, :k].any(dim=1).sum().item() / len(target) for k in topk]


def numpy2_compatible(module) -> None:
    """clip_benchmark 1.6.2's ``zeroshot_classification.accuracy`` calls ``float()`` on a one-element array, an
    error in recent NumPy 2; where (and only where) it fails on a probe, the module's ``accuracy`` is replaced by
    :func:`_topk_accuracy`, which returns the same numbers (the rest of ``evaluate`` stays clip_benchmark's)."""
    if module.accuracy is _topk_accuracy:
        return
    try:
        module.accuracy(torch.tensor([[0.1, 0.9]]), torch.tensor([1]), topk=(1,))
    except TypeError:
        logger.info("clip_benchmark's accuracy fails under this NumPy; using an equivalent top-k accuracy")
        module.accuracy = _topk_accuracy


def evaluate(model: ZeroShotModel, spec: DatasetSpec, cfg: ZeroShotConfig) -> dict[str, float]:
    """clip_benchmark's metrics of ``model`` on ``spec``."""
    from clip_benchmark.metrics import zeroshot_classification, zeroshot_retrieval

    numpy2_compatible(zeroshot_classification)

    dataset = spec.build(model.transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, shuffle=False, collate_fn=spec.collate())
    clip, amp = model.model, cfg.amp
    if model.lorentz:
        radius = lorentz_radius(
            model.model, model.tokenizer, _texts(dataset, loader, spec.task), (b[0] for b in loader)
        )
        clip, amp = LorentzAsCosine(model.model, radius), False  # float64 lift: no autocast
    device = cfg.device.type  # clip_benchmark passes it to torch.autocast, which takes the type
    if spec.task == "zeroshot_classification":
        return zeroshot_classification.evaluate(
            clip, loader, model.tokenizer, dataset.classes, dataset.templates, device=device, amp=amp
        )
    if spec.task == "zeroshot_retrieval":
        return zeroshot_retrieval.evaluate(
            clip, loader, model.tokenizer, device=device, amp=amp, recall_k_list=list(cfg.recall_k)
        )
    raise ZeroShotError(f"dataset {spec.name!r}: task {spec.task!r} is neither classification nor retrieval")


def require_metrics() -> None:
    """clip_benchmark's metric modules import here, or one clear error saying how to install them."""
    try:
        from clip_benchmark.metrics import zeroshot_classification, zeroshot_retrieval  # noqa: F401
    except ImportError as error:
        raise ZeroShotError(
            f"clip_benchmark's metric modules are not installed ({error}): pip install -e '.[zero-shot]' and "
            "pip install --no-deps clip-benchmark (its own requirements would replace your torch build)"
        ) from error


def run_zero_shot(models: Sequence, datasets: Sequence[DatasetSpec], cfg: ZeroShotConfig) -> list[ZeroShotRow]:
    """Every model (a :class:`ZeroShotModel` or a callable loading one, loaded one at a time) on every dataset;
    the tables written to ``cfg.out``."""
    if not models or not datasets:
        raise ZeroShotError("zero-shot needs at least one model (--model, --hysac) and one dataset")
    require_metrics()
    if cfg.device.type == "cuda" and cfg.device.index is not None:
        torch.cuda.set_device(cfg.device)
    rows = []
    for entry in models:
        model = entry() if callable(entry) else entry
        for spec in datasets:
            logger.info("zero-shot: %s on %s", model.name, spec.name)
            metrics = {k: float(v) for k, v in evaluate(model, spec, cfg).items()}
            rows.append(ZeroShotRow(model.name, model.kind, spec.name, spec.task, metrics))
        del model
    write_report(rows, cfg)
    return rows


def differences(rows: Sequence[ZeroShotRow], baseline: str | None) -> dict[tuple[str, str, str], float]:
    """``(model, dataset, metric) -> value - baseline's value`` on the same dataset and metric."""
    names = list(dict.fromkeys(r.model for r in rows))
    base = baseline or names[0]
    if base not in names:
        raise ZeroShotError(f"--baseline {base!r} is not among the models {names}")
    ref = {(r.dataset, m): v for r in rows if r.model == base for m, v in r.metrics.items()}
    return {
        (r.model, r.dataset, m): v - ref[(r.dataset, m)]
        for r in rows
        for m, v in r.metrics.items()
        if (r.dataset, m) in ref
    }


def write_report(rows: Sequence[ZeroShotRow], cfg: ZeroShotConfig) -> dict[str, Path]:
    """``zero_shot.csv`` (metrics as clip_benchmark returns them, fractions, and ``delta_<metric>``),
    ``zero_shot.md`` / ``.tex`` (percent, the difference to the baseline in brackets)."""
    base = cfg.baseline or rows[0].model
    deltas = differences(rows, base)
    metrics = [
        m for m in (*CLASSIFICATION_METRICS, *retrieval_metrics(cfg.recall_k)) if any(m in r.metrics for r in rows)
    ]
    columns = ["model", "kind", "dataset", "task", *metrics, *(f"delta_{m}" for m in metrics)]
    lines = [
        [r.model, r.kind, r.dataset, r.task]
        + [_plain(r.metrics.get(m)) for m in metrics]
        + [_plain(deltas.get((r.model, r.dataset, m))) for m in metrics]
        for r in rows
    ]

    def cell(r: ZeroShotRow, m: str) -> str:
        if m not in r.metrics or r.metrics[m] != r.metrics[m]:  # absent or NaN (acc5 with < 5 classes)
            return "-"
        d = deltas.get((r.model, r.dataset, m))
        return f"{100 * r.metrics[m]:.1f}" + ("" if r.model == base or d is None else f" ({100 * d:+.1f})")

    body = [[r.model, r.dataset, *(cell(r, m) for m in metrics)] for r in rows]
    note = (
        f"Zero-shot classification and image-text retrieval (clip_benchmark's metrics, percent); in brackets the "
        f"difference to {base}. HySAC ranks by its Lorentz similarity, the CLIPs by cosine."
    )
    return write_tables(cfg.out, "zero_shot", columns, lines, ["model", "dataset", *metrics], body, note)


def _plain(value: float | None) -> str:
    return "" if value is None or value != value else repr(float(value))
