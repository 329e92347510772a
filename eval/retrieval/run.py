"""Cross-modal retrieval on ViSU (Safe-CLIP paper, Table 2): ``python -m eval retrieval ...``.

Directions (R@1/10/20, percent): ``T->V`` and ``V->T`` among the safe pairs; ``T*->V+V*`` (unsafe
text queries against safe and unsafe images) and ``V*->T+T*`` (unsafe image queries against safe
and unsafe texts), where the safe counterpart is the ground truth. The metrics are
:func:`eval.metrics.safe_clip_retrieval` (one implementation, shared with the trainer's validation).

Any encoder pair is accepted (``NAME=SOURCE`` or ``NAME=TEXT_SOURCE::VISION_SOURCE``; a source is
what ``safe_encoders.load_text_encoder`` / ``load_vision_encoder`` take: a Hub id or folder of the
original CLIP, a registry name such as ``safeclip-vit-l-14``, or a folder / file of our exports).
Embeddings are cached on disk per (encoder identity, tokenizer or image processor, data) by
:mod:`eval.retrieval.embeddings`, so comparing several models, or models sharing a tower, never encodes the same
thing twice.
The models are :mod:`eval.retrieval.encoder_pairs`, the data :mod:`eval.retrieval.data`.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from eval.errors import RetrievalError
from eval.report import paper_tables
from eval.report.tables import csv_text, latex_table, markdown_table
from eval.retrieval.data import RetrievalData
from eval.retrieval.embeddings import Embedder, EmbeddingCache
from eval.retrieval.encoder_pairs import EncoderPair
from safe_encoders.atomic import atomic_write_text

DIRECTIONS: tuple[tuple[str, str], ...] = (
    ("T->V", "t2v"),
    ("V->T", "v2t"),
    ("T*->V+V*", "ut2v"),
    ("V*->T+T*", "uv2t"),
)
KS: tuple[int, ...] = (1, 10, 20)
CSV_COLUMNS: tuple[str, ...] = ("model", "direction", "k", "recall")

PAPER_PREFIX = "paper: "
DIFF_PREFIX = "ours - paper: "

#: Safe-CLIP paper, Table 2 (ViSU test, ViT-L/14), all five rows: ``paper: MODEL`` -> direction -> (R@1, R@10, R@20),
#: percent (``eval.report.paper_tables``).
PAPER_TABLE2: dict[str, dict[str, tuple[float, ...]]] = {
    PAPER_PREFIX + model: dict(table) for model, table in paper_tables.RETRIEVAL.items()
}

#: Our model names (``--backbones``) that ran the condition of a Table 2 row (ViT-L/14 on the ViSU test split).
#: A ``--model`` named exactly as a paper row (e.g. ``Safe-CLIP (ViT-L/14)``) is compared with it too.
PAPER_COUNTERPARTS: dict[str, str] = {
    "CLIP ViT-L/14": "CLIP (ViT-L/14)",
    "Safe-CLIP ViT-L/14": "Safe-CLIP (ViT-L/14)",
}


@dataclass(frozen=True)
class RetrievalRow:
    """One line of ``retrieval.csv``: recall in percent."""

    model: str
    direction: str
    k: int
    recall: float


# --------------------------------------------------------------------------- the table


def retrieval_rows(model: str, embeddings: Mapping[str, torch.Tensor], ks: Sequence[int] = KS) -> list[RetrievalRow]:
    """The Table 2 rows of one model from its four embedding matrices (via ``eval.metrics``)."""
    from eval.metrics import safe_clip_retrieval

    metrics = safe_clip_retrieval(
        embeddings["text_safe"], embeddings["image_safe"], embeddings["text_unsafe"], embeddings["image_unsafe"], ks=ks
    )
    return rows_from_metrics(model, metrics, ks)


def rows_from_metrics(model: str, metrics: Mapping[str, float], ks: Sequence[int] = KS) -> list[RetrievalRow]:
    """Table 2 rows (percent) from the fractions :func:`eval.metrics.safe_clip_retrieval` returns."""
    return [
        RetrievalRow(model, direction, k, 100.0 * metrics[f"{key}_r{k}"]) for direction, key in DIRECTIONS for k in ks
    ]


def reference_rows(ks: Sequence[int] = KS) -> list[RetrievalRow]:
    """The paper's Table 2 as rows, all five models (named ``paper: MODEL``)."""
    return [
        RetrievalRow(model, d, k, values[KS.index(k)])
        for model, table in PAPER_TABLE2.items()
        for d, values in table.items()
        for k in ks
        if k in KS
    ]


def difference_rows(rows: Sequence[RetrievalRow], split: str) -> list[RetrievalRow]:
    """``ours - paper: NAME`` rows (recall points) for our models that ran a Table 2 condition.

    Only on the test split (Table 2's); a model matches a paper row through :data:`PAPER_COUNTERPARTS`
    or by carrying the paper row's exact name.
    """
    if split != "test":
        return []
    paper = {
        (model, d, k): v
        for model, table in paper_tables.RETRIEVAL.items()
        for d, values in table.items()
        for k, v in zip(paper_tables.RETRIEVAL_KS, values, strict=True)
    }
    out = []
    for r in rows:
        if r.model.startswith((PAPER_PREFIX, DIFF_PREFIX)):
            continue
        counterpart = PAPER_COUNTERPARTS.get(r.model, r.model)
        if (counterpart, r.direction, r.k) in paper:
            out.append(
                RetrievalRow(DIFF_PREFIX + r.model, r.direction, r.k, r.recall - paper[(counterpart, r.direction, r.k)])
            )
    return out


def wide_table(rows: Sequence[RetrievalRow]) -> tuple[list[str], list[list[str]]]:
    """Table 2 layout: one line per model, columns direction x R@k."""
    ks = sorted({r.k for r in rows})
    header = ["model"] + [f"{d} R@{k}" for d, _ in DIRECTIONS for k in ks]
    cells = {(r.model, r.direction, r.k): r.recall for r in rows}
    models = list(dict.fromkeys(r.model for r in rows))
    body = [
        [m]
        + [
            f"{cells[(m, d, k)]:{'+' if m.startswith(DIFF_PREFIX) else ''}.1f}" if (m, d, k) in cells else "-"
            for d, _ in DIRECTIONS
            for k in ks
        ]
        for m in models
    ]
    return header, body


def to_markdown(rows: Sequence[RetrievalRow], split: str = "test") -> str:
    header, body = wide_table(rows)
    caption = (
        f"Retrieval on ViSU {split} (recall %, Safe-CLIP Table 2 layout; unsafe queries: the safe "
        "counterpart is the ground truth)."
    )
    if any(r.model.startswith(PAPER_PREFIX) for r in rows):
        caption += f" `{PAPER_PREFIX}...`: the paper's Table 2 rows (ViSU test, ViT-L/14)."
    if any(r.model.startswith(DIFF_PREFIX) for r in rows):
        caption += f" `{DIFF_PREFIX}...`: ours minus the paper's row of the same model, in recall points."
    return f"{caption}\n\n{markdown_table(header, body)}\n"


def to_latex(rows: Sequence[RetrievalRow]) -> str:
    return "\n".join(latex_table(*wide_table(rows))) + "\n"


def write_retrieval(rows: Sequence[RetrievalRow], out: str | Path, split: str = "test") -> Path:
    """``retrieval.csv`` (``model, direction, k, recall``), ``retrieval.md`` and ``retrieval.tex`` in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lines = [[r.model, r.direction, r.k, f"{r.recall:.4f}"] for r in rows]
    atomic_write_text(out / "retrieval.md", to_markdown(rows, split))
    atomic_write_text(out / "retrieval.tex", to_latex(rows))
    return atomic_write_text(out / "retrieval.csv", csv_text(CSV_COLUMNS, lines))


def read_retrieval_csv(path: str | Path) -> list[RetrievalRow]:
    with Path(path).open(newline="", encoding="utf-8") as fh:
        return [RetrievalRow(r["model"], r["direction"], int(r["k"]), float(r["recall"])) for r in csv.DictReader(fh)]


def run_retrieval(
    pairs: Sequence[EncoderPair],
    data: RetrievalData,
    out: str | Path,
    *,
    cache_dir: str | Path | None = None,
    embedder: Embedder | None = None,
    reference: bool = True,
) -> list[RetrievalRow]:
    """Embed ``data`` with every pair (through the cache), compute Table 2 and write it to ``out``."""
    names = [p.name for p in pairs]
    if not pairs or len(set(names)) != len(names):
        raise RetrievalError(f"need at least one model, with distinct names; got {names}")
    embedder = embedder or Embedder(EmbeddingCache(cache_dir or Path(out) / "embeddings"))
    rows: list[RetrievalRow] = []
    for pair in pairs:
        rows += retrieval_rows(pair.name, embedder.embed(pair, data))
    if reference:
        rows += reference_rows()
        rows += difference_rows(rows, data.split)
    write_retrieval(rows, out, data.split)
    return rows
