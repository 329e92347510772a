"""Cross-modal retrieval on ViSU (Safe-CLIP paper, Table 2): ``python -m eval retrieval ...``.

Directions (R@1/10/20, percent): ``T->V`` and ``V->T`` among the safe pairs; ``T*->V+V*`` (unsafe
text queries against safe and unsafe images) and ``V*->T+T*`` (unsafe image queries against safe
and unsafe texts), where the safe counterpart is the ground truth. The metrics are
:func:`eval.metrics.safe_clip_retrieval` (one implementation, shared with the trainer's validation).

Any encoder pair is accepted (``NAME=SOURCE`` or ``NAME=TEXT_SOURCE::VISION_SOURCE``; a source is
what ``safe_encoders.load_text_encoder`` / ``load_vision_encoder`` take: a Hub id or folder of the
original CLIP, a registry name such as ``safeclip-vit-l-14``, or a folder / file of our exports).
Embeddings are cached on disk per (encoder identity, tokenizer or image processor, data), so
comparing several models, or models sharing a tower, never encodes the same thing twice.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from eval import paper_tables
from eval.errors import EvalError
from eval.placement import default_device
from eval.tables import csv_text, latex_table, markdown_table
from safe_encoders.atomic import atomic_write_text
from safe_encoders.sources import resolve_source

logger = logging.getLogger("safe_encoders.eval")

DIRECTIONS: tuple[tuple[str, str], ...] = (
    ("T->V", "t2v"),
    ("V->T", "v2t"),
    ("T*->V+V*", "ut2v"),
    ("V*->T+T*", "uv2t"),
)
KS: tuple[int, ...] = (1, 10, 20)
CSV_COLUMNS: tuple[str, ...] = ("model", "direction", "k", "recall")
CACHE_VERSION = 1

PAPER_PREFIX = "paper: "
DIFF_PREFIX = "ours - paper: "

#: Safe-CLIP paper, Table 2 (ViSU test, ViT-L/14), all five rows: ``paper: MODEL`` -> direction -> (R@1, R@10, R@20),
#: percent (``eval.paper_tables``).
PAPER_TABLE2: dict[str, dict[str, tuple[float, ...]]] = {
    PAPER_PREFIX + model: dict(table) for model, table in paper_tables.RETRIEVAL.items()
}

#: Our model names (``--backbones``) that ran the condition of a Table 2 row (ViT-L/14 on the ViSU test split).
#: A ``--model`` named exactly as a paper row (e.g. ``Safe-CLIP (ViT-L/14)``) is compared with it too.
PAPER_COUNTERPARTS: dict[str, str] = {
    "CLIP ViT-L/14": "CLIP (ViT-L/14)",
    "Safe-CLIP ViT-L/14": "Safe-CLIP (ViT-L/14)",
}


#: The backbones of the per-backbone retrieval table (the supplementary's Table 10 as we read it: Table 2
#: repeated for each released Safe-CLIP backbone): label -> registry name. The original CLIP of each
#: row is the checkpoint's ``base_model``. No paper numbers are shipped for it; see ``eval/README.md``.
BACKBONES: dict[str, str] = {
    "ViT-L/14": "safeclip-vit-l-14",
    "ViT-L/14@336": "safeclip-vit-l-14-336",
    "ViT-H/14": "safeclip-vit-h-14",
}


class RetrievalError(EvalError, ValueError):
    """A model spec, the data or a cached embedding file is not usable."""


@dataclass(frozen=True)
class RetrievalRow:
    """One line of ``retrieval.csv``: recall in percent."""

    model: str
    direction: str
    k: int
    recall: float


@dataclass(frozen=True)
class EncoderPair:
    """A model to evaluate: its text and vision encoder sources and where its tokenizer / processor come from."""

    name: str
    text: str
    vision: str
    processor: str | None = None
    """Hub id or folder with the tokenizer and image processor; default: the sources' base model."""

    @classmethod
    def parse(cls, spec: str, processor: str | None = None) -> EncoderPair:
        """``NAME=SOURCE`` (both towers) or ``NAME=TEXT_SOURCE::VISION_SOURCE``."""
        name, sep, sources = spec.partition("=")
        if not sep or not name.strip() or not sources.strip():
            raise RetrievalError(
                f"model spec {spec!r}: expected NAME=SOURCE or NAME=TEXT_SOURCE::VISION_SOURCE, "
                "e.g. clip=openai/clip-vit-large-patch14 or safe=safeclip-vit-l-14"
            )
        text, _, vision = sources.partition("::")
        return cls(name.strip(), text.strip(), (vision or text).strip(), processor)


def backbone_pairs(labels: Sequence[str] | None = None) -> list[EncoderPair]:
    """``CLIP <backbone>`` and ``Safe-CLIP <backbone>`` pairs for the per-backbone table (default: all of them).

    Labels are those of :data:`BACKBONES` (case and ``@`` / ``-`` spelling tolerated, e.g. ``vit-l-14-336``).
    """
    from safe_encoders.registry import get_checkpoint

    def norm(label: str) -> str:
        return label.strip().lower().replace("@", "-").replace("/", "-")

    by_norm = {norm(k): k for k in BACKBONES}
    chosen = []
    for label in labels if labels is not None else list(BACKBONES):
        if norm(label) not in by_norm:
            raise RetrievalError(f"unknown backbone {label!r}; choose among {list(BACKBONES)} (or 'all')")
        chosen.append(by_norm[norm(label)])
    pairs = []
    for label in dict.fromkeys(chosen):
        checkpoint = get_checkpoint(BACKBONES[label])
        pairs.append(EncoderPair(f"CLIP {label}", checkpoint.base_model, checkpoint.base_model))
        pairs.append(EncoderPair(f"Safe-CLIP {label}", checkpoint.name, checkpoint.name))
    return pairs


@dataclass
class RetrievalData:
    """The quadruplets to embed: row i of each list belongs to quadruplet i."""

    split: str
    safe_texts: list[str]
    unsafe_texts: list[str]
    safe_images: list[Path]
    unsafe_images: list[Path]
    _keys: dict[str, str] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        n = len(self.safe_texts)
        if not n or any(len(x) != n for x in (self.unsafe_texts, self.safe_images, self.unsafe_images)):
            raise RetrievalError(f"retrieval data of split {self.split!r} must be non-empty lists of equal length")

    def __len__(self) -> int:
        return len(self.safe_texts)

    def head(self, n: int) -> RetrievalData:
        """The first ``n`` quadruplets."""
        return RetrievalData(
            self.split, self.safe_texts[:n], self.unsafe_texts[:n], self.safe_images[:n], self.unsafe_images[:n]
        )

    def key(self, kind: str) -> str:
        """Digest of what the ``kind`` (text / vision) encoder sees: the texts, or the image files' paths and stats.

        Computed once per kind (every model of a run shares it).
        """
        if kind not in self._keys:
            if kind == "text":
                payload: Any = [self.safe_texts, self.unsafe_texts]
            else:
                stats = [(p.resolve(), p.stat()) for p in [*self.safe_images, *self.unsafe_images]]
                payload = [[str(path), st.st_size, st.st_mtime_ns] for path, st in stats]
            self._keys[kind] = hashlib.sha256(json.dumps([self.split, payload]).encode("utf-8")).hexdigest()
        return self._keys[kind]


def data_from_visu(source: Any) -> RetrievalData:
    """The usable rows of a :class:`eval.visu.VisuSource` (texts and image files)."""
    safe, unsafe = zip(*(source.image_paths(i) for i in range(len(source))), strict=True) if len(source) else ((), ())
    return RetrievalData(
        split=source.split,
        safe_texts=[r.safe_text for r in source.rows],
        unsafe_texts=[r.unsafe_text for r in source.rows],
        safe_images=list(safe),
        unsafe_images=list(unsafe),
    )


# --------------------------------------------------------------------------- embeddings and their cache


class EmbeddingCache:
    """Embedding matrices on disk (safetensors), one file per (encoder, preprocessing, data, kind)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, identity: str) -> Path:
        return self.root / f"{hashlib.sha256(identity.encode('utf-8')).hexdigest()[:24]}.safetensors"

    def get(self, identity: str) -> dict[str, torch.Tensor] | None:
        path = self.path(identity)
        if not path.is_file():
            return None
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
        if meta.get("identity") != identity:
            logger.warning("embedding cache %s belongs to another key; recomputing", path)
            return None
        return load_file(str(path))

    def put(self, identity: str, tensors: Mapping[str, torch.Tensor]) -> Path:
        from safe_encoders.atomic import atomic_write

        contiguous = {k: v.contiguous() for k, v in tensors.items()}
        metadata = {"identity": identity, "version": str(CACHE_VERSION)}
        return atomic_write(self.path(identity), lambda tmp: save_file(contiguous, tmp, metadata=metadata))


def _processor_source(pair: EncoderPair, kind: str, base: str | None) -> str:
    """Where the tokenizer (text) or image processor (vision) of a pair is read from (``base``: the
    resolved source's base model)."""
    if pair.processor:
        return pair.processor
    src = pair.text if kind == "text" else pair.vision
    path = Path(src)
    marker = "tokenizer_config.json" if kind == "text" else "preprocessor_config.json"
    if path.is_dir() and (path / marker).is_file():
        return str(path)
    if base:
        return base
    if not path.exists():
        return src  # a Hub id: its own tokenizer / processor
    raise RetrievalError(
        f"model {pair.name!r}: cannot tell which tokenizer / image processor goes with {src}; pass --processor"
    )


def _processor_identity(spec: str) -> str:
    path = Path(spec)
    if path.is_dir():
        stamps = sorted(
            f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}"
            for p in path.iterdir()
            if p.is_file() and p.suffix in (".json", ".txt", ".model")
        )
        return f"dir:{path.resolve()}|" + "|".join(stamps)
    return spec


def load_encoder(source: str, kind: str, device: torch.device) -> torch.nn.Module:
    """The encoder (with its projection head) of ``source``, via safe_encoders."""
    from safe_encoders import load_text_encoder, load_vision_encoder

    loader = load_text_encoder if kind == "text" else load_vision_encoder
    return loader(source, with_projection=True, device=device).eval()


@torch.no_grad()
def _embed_texts(
    model: torch.nn.Module, tokenizer: Any, texts: Sequence[str], batch_size: int, device: torch.device
) -> torch.Tensor:
    out = []
    max_length = min(tokenizer.model_max_length, model.config.max_position_embeddings)
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(
            list(texts[start : start + batch_size]),
            padding="max_length",
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        emb = model(input_ids=enc["input_ids"].to(device), attention_mask=enc["attention_mask"].to(device))
        out.append(emb.text_embeds.float().cpu())
    return torch.cat(out)


@torch.no_grad()
def _embed_images(
    model: torch.nn.Module, processor: Any, paths: Sequence[Path], batch_size: int, device: torch.device
) -> torch.Tensor:
    from PIL import Image

    out = []
    for start in range(0, len(paths), batch_size):
        images = []
        for p in paths[start : start + batch_size]:
            with Image.open(p) as im:
                images.append(im.convert("RGB"))
        pixels = processor(images, return_tensors="pt")["pixel_values"].to(device=device, dtype=model.dtype)
        out.append(model(pixel_values=pixels).image_embeds.float().cpu())
    return torch.cat(out)


@dataclass
class Embedder:
    """Embeds retrieval data with encoder pairs, through the on-disk cache.

    ``loader(source, kind, device)`` builds an encoder (default :func:`load_encoder`); ``encoded``
    counts the (pair name, kind) embeddings actually computed rather than read from the cache.
    """

    cache: EmbeddingCache
    batch_size: int = 64
    device: torch.device = field(default_factory=default_device)
    loader: Callable[[str, str, torch.device], torch.nn.Module] = load_encoder
    encoded: list[tuple[str, str]] = field(default_factory=list)

    def embed(self, pair: EncoderPair, data: RetrievalData) -> dict[str, torch.Tensor]:
        """``text_safe, text_unsafe, image_safe, image_unsafe`` embedding matrices of ``data``."""
        out: dict[str, torch.Tensor] = {}
        for kind in ("text", "vision"):
            source = pair.text if kind == "text" else pair.vision
            resolved = resolve_source(source, kind)  # once: it may read Hub files
            proc = _processor_source(pair, kind, resolved.base_model)
            encoder = {"kind": kind, "identity": resolved.identity, "digest": resolved.digest}
            identity = json.dumps(
                {
                    "encoder": json.dumps(encoder, sort_keys=True),
                    "processor": _processor_identity(proc),
                    "data": data.key(kind),
                    "split": data.split,
                    "version": CACHE_VERSION,
                }
            )
            cached = self.cache.get(identity)
            if cached is None:
                model = self.loader(source, kind, self.device)
                if kind == "text":
                    from transformers import AutoTokenizer

                    tok = AutoTokenizer.from_pretrained(proc)
                    cached = {
                        "safe": _embed_texts(model, tok, data.safe_texts, self.batch_size, self.device),
                        "unsafe": _embed_texts(model, tok, data.unsafe_texts, self.batch_size, self.device),
                    }
                else:
                    from transformers import AutoImageProcessor

                    ip = AutoImageProcessor.from_pretrained(proc)
                    cached = {
                        "safe": _embed_images(model, ip, data.safe_images, self.batch_size, self.device),
                        "unsafe": _embed_images(model, ip, data.unsafe_images, self.batch_size, self.device),
                    }
                del model
                self.cache.put(identity, cached)
                self.encoded.append((pair.name, kind))
            prefix = "text" if kind == "text" else "image"
            out[f"{prefix}_safe"], out[f"{prefix}_unsafe"] = cached["safe"], cached["unsafe"]
        return out

    def embed_lists(self, pair: EncoderPair, kind: str, lists: Mapping[str, Sequence[Any]]) -> dict[str, torch.Tensor]:
        """Embed named lists of texts (``kind="text"``) or image paths (``"vision"``) with one tower of ``pair``.

        Each list is cached on its own (keyed by its content, see :func:`list_key`), so lists shared between
        calls (e.g. distractors) are encoded once; the tower is loaded at most once per call.
        """
        if kind not in ("text", "vision"):
            raise RetrievalError(f"kind must be 'text' or 'vision', got {kind!r}")
        source = pair.text if kind == "text" else pair.vision
        resolved = resolve_source(source, kind)
        proc = _processor_source(pair, kind, resolved.base_model)
        encoder = json.dumps({"kind": kind, "identity": resolved.identity, "digest": resolved.digest}, sort_keys=True)
        model = processor = None
        out: dict[str, torch.Tensor] = {}
        for name, items in lists.items():
            identity = json.dumps(
                {
                    "encoder": encoder,
                    "processor": _processor_identity(proc),
                    "data": list_key(kind, items),
                    "version": CACHE_VERSION,
                }
            )
            cached = self.cache.get(identity)
            if cached is None:
                if model is None:
                    from transformers import AutoImageProcessor, AutoTokenizer

                    model = self.loader(source, kind, self.device)
                    processor = (AutoTokenizer if kind == "text" else AutoImageProcessor).from_pretrained(proc)
                embed = _embed_texts if kind == "text" else _embed_images
                cached = {"embeddings": embed(model, processor, list(items), self.batch_size, self.device)}
                self.cache.put(identity, cached)
                self.encoded.append((pair.name, f"{kind}:{name}"))
            out[name] = cached["embeddings"]
        return out


def list_key(kind: str, items: Sequence[Any]) -> str:
    """Digest of a list the ``kind`` tower sees: the texts, or the image files' paths, sizes and mtimes."""
    if kind == "text":
        payload: Any = list(items)
    else:
        payload = [[str(Path(p).resolve()), Path(p).stat().st_size, Path(p).stat().st_mtime_ns] for p in items]
    return hashlib.sha256(json.dumps([kind, payload]).encode("utf-8")).hexdigest()


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
