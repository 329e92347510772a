"""Safe search over a scanned collection: nearest neighbours by Lorentz distance with a FAISS index.

The Lorentz distance `d(x, y) = arccosh(c (x_t y_t - x.y)) / sqrt(c)` grows with `x_t y_t - x.y`, so
the nearest items are those that MAXIMISE `<x, y>_L = x.y - x_t y_t`: an inner product between the
augmented query `[x_t, x]` and the augmented item `[-y_t, y]`. A FAISS inner-product index over the
augmented items therefore returns the exact Lorentz top-k (flat index, the default) or an
approximate one (IVF: the items are clustered and a query visits the `nprobe` clusters of highest
mean Lorentz inner product). The candidates are then re-ranked by the exact distance in float64.
(A graph index such as HNSW does not fit: it links items by the inner product between items, and
between two augmented items `[-y_t, y] . [-z_t, z] = y_t z_t + y.z` is not a Lorentz similarity.)

Safety modes (`SAFETY_MODES`):
- `keep`: the nearest items as they are;
- `redirect`: an unsafe query (beyond the bound of its modality) is first moved toward the root by
  `traversal.traverse_to_safe`, the library's safety traversal;
- `filter`: items flagged unsafe by the scan are never returned.

from safe_encoders.moderation.search import build_index, search
index = build_index("scan_out")                         # a scan made with embeddings=True
hits = search(model, index, texts=["a beach at dusk"], k=10, safety="redirect")
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..atomic import atomic_write, atomic_write_text
from ..errors import SafeEncodersError
from ..extras import require
from ..hysac import lorentz
from ..hysac.bounds import Modality
from ..hysac.classify import embed_images, embed_texts
from ..hysac.traversal import traverse_to_safe
from .collection import load_image
from .scan import ScanOutput, read_scan

if TYPE_CHECKING:
    from ..hysac.model import HySAC

INDEX_FORMAT = "safe-encoders-lorentz-index"
INDEX_FOLDER = ".search-index"  # hidden: readers of the scan folder as a table skip it


class SearchError(SafeEncodersError, ValueError):
    """A search cannot run as asked (no embeddings in the scan, another model, unknown mode)."""


@dataclass(frozen=True)
class SafetyMode:
    """What a safety mode does: traverse unsafe queries first, and / or drop items the scan flagged unsafe."""

    name: str
    redirect_queries: bool
    drop_unsafe: bool
    help: str


SAFETY_MODES: dict[str, SafetyMode] = {
    mode.name: mode
    for mode in (
        SafetyMode("keep", False, False, "the nearest items as they are"),
        SafetyMode("redirect", True, False, "move an unsafe query toward the root first (safety traversal)"),
        SafetyMode("filter", False, True, "never return items the scan flagged unsafe"),
    )
}

INDEX_TYPES = ("flat", "ivf")


@dataclass(frozen=True)
class Hit:
    """One result: the item's `id` and `modality`, its Lorentz `distance` to the query, the scan's verdict."""

    id: str
    modality: str
    distance: float
    unsafe: bool
    row: int


def augment_items(y: torch.Tensor, curvature: float) -> np.ndarray:
    """`[-y_t, y]` per row (float32), the gallery side of the Lorentz inner product."""
    return np.ascontiguousarray(torch.cat([-lorentz.time_component(y, curvature)[:, None], y], 1).numpy(), "float32")


def augment_queries(x: torch.Tensor, curvature: float) -> np.ndarray:
    """`[x_t, x]` per row (float32): `augment_queries(x) . augment_items(y) = <x, y>_L`."""
    return np.ascontiguousarray(torch.cat([lorentz.time_component(x, curvature)[:, None], x], 1).numpy(), "float32")


class LorentzIndex:
    """Items' embeddings (space components) in a FAISS inner-product index, with their ids and verdicts.

    Args:
        embeddings: `(N, D)` points on the hyperboloid of curvature `-curvature`.
        ids, modalities, unsafe: per item.
        thresholds: the bound per modality used to redirect queries (`redirect` mode).
        index_type: "flat" (exact, default) or "ivf" (approximate, for large collections).
        nprobe: clusters an "ivf" index visits per query (more: slower, closer to exact).
    """

    def __init__(
        self,
        embeddings: torch.Tensor | np.ndarray,
        ids: Sequence[str],
        modalities: Sequence[str],
        unsafe: Sequence[bool],
        *,
        curvature: float,
        thresholds: dict[str, float | None] | None = None,
        index_type: str = "flat",
        nprobe: int = 16,
        faiss_index: Any = None,
    ) -> None:
        faiss = require("faiss", "scan", feature="search")
        self.embeddings = torch.as_tensor(np.asarray(embeddings), dtype=torch.float32)
        if self.embeddings.ndim != 2 or not len(ids) == len(modalities) == len(unsafe) == len(self.embeddings):
            raise SearchError(
                f"LorentzIndex: {tuple(self.embeddings.shape)} embeddings for {len(ids)} ids, {len(modalities)} "
                f"modalities, {len(unsafe)} verdicts."
            )
        if len(self.embeddings) == 0:
            raise SearchError("LorentzIndex: no items: an empty gallery has nothing to search.")
        # One pass: the squared norms (needed for the time components) are finite only if every value is.
        squared = torch.einsum("nd,nd->n", self.embeddings, self.embeddings)
        if not torch.isfinite(squared).all():
            raise SearchError(
                "LorentzIndex: non-finite embeddings (NaN, Inf, or so large that their squared norm overflows "
                "float32); the scan should have recorded them as errors."
            )
        if index_type not in INDEX_TYPES:
            raise SearchError(f"index_type must be one of {INDEX_TYPES}, got {index_type!r}.")
        self.ids, self.modalities = list(ids), list(modalities)
        self.unsafe = np.asarray(unsafe, dtype=bool)
        self.curvature = float(curvature)
        self.thresholds = dict(thresholds or {})
        self.index_type = index_type
        self._quantizer = None  # an IVF index does not own its quantizer: keep it alive
        if faiss_index is None:
            vectors = np.empty((len(self.embeddings), self.embeddings.shape[1] + 1), dtype=np.float32)
            vectors[:, 0] = -torch.sqrt(1 / self.curvature + squared).numpy()  # -y_t, as augment_items
            vectors[:, 1:] = self.embeddings.numpy()
            faiss_index = faiss.IndexFlatIP(vectors.shape[1])
            if index_type == "ivf":
                # about 4 sqrt(N) clusters, with >= 39 items each for k-means (FAISS's minimum)
                clusters = max(1, min(int(4 * len(vectors) ** 0.5), len(vectors) // 39))
                self._quantizer, metric = faiss_index, faiss.METRIC_INNER_PRODUCT
                faiss_index = faiss.IndexIVFFlat(self._quantizer, vectors.shape[1], clusters, metric)
                faiss_index.train(vectors)
            faiss_index.add(vectors)
        self.faiss_index = faiss_index
        self.nprobe = nprobe

    def __len__(self) -> int:
        return len(self.ids)

    def search(
        self,
        queries: torch.Tensor,
        *,
        k: int = 10,
        safety: str = "keep",
        modality: Modality = "text",
        boundary: float | None = None,
        gallery: str | None = None,
    ) -> list[list[Hit]]:
        """The `k` nearest items per query (rows of `queries`, space components), nearest first.

        Args:
            safety: a name of `SAFETY_MODES`.
            modality: the queries' modality, whose bound `redirect` uses.
            boundary: the bound for `redirect` (default: the index's threshold of `modality`).
            gallery: only return items of this modality ("text" / "image"; default all).
        """
        faiss = require("faiss", "scan", feature="search")
        if safety not in SAFETY_MODES:
            raise SearchError(f"Unknown safety mode {safety!r}; choose one of {', '.join(SAFETY_MODES)}.")
        mode = SAFETY_MODES[safety]
        queries = torch.as_tensor(queries, dtype=torch.float64)
        if queries.ndim != 2 or queries.shape[1] != self.embeddings.shape[1]:
            raise SearchError(f"queries must be (Q, {self.embeddings.shape[1]}), got {tuple(queries.shape)}.")
        if not torch.isfinite(queries).all():
            raise SearchError("search: non-finite query embedding.")
        if mode.redirect_queries:
            boundary = boundary if boundary is not None else self.thresholds.get(modality)
            if boundary is None:
                raise SearchError(f"redirect needs the {modality} bound: the index has none; pass boundary=.")
            queries = traverse_to_safe(queries, self.curvature, boundary)
        excluded = np.zeros(len(self), dtype=bool)
        if mode.drop_unsafe:
            excluded |= self.unsafe
        if gallery is not None:
            excluded |= np.asarray(self.modalities) != gallery
        if excluded.all():
            raise SearchError(
                f"search: no item is left to return ({len(self)} items; safety {safety!r}, gallery {gallery!r}): "
                "every one is flagged unsafe or of another modality."
            )
        params, keep = None, []
        selector = {}
        if excluded.any():
            keep = [faiss.IDSelectorBatch(np.flatnonzero(excluded).astype("int64"))]
            keep.append(faiss.IDSelectorNot(keep[0]))  # `keep` holds both: FAISS does not own them
            selector = {"sel": keep[1]}
        if self.index_type == "ivf":
            params = faiss.SearchParametersIVF(nprobe=self.nprobe, **selector)
        elif selector:
            params = faiss.SearchParameters(**selector)
        k = min(k, len(self))
        # faiss-cpu 1.15 switches the flat index to BLAS only from 128000 queries on; below that its per-query
        # loop was 10x slower than the BLAS path in benchmarks/bench_scan_search.py. (A global FAISS knob.)
        faiss.cvar.distance_compute_blas_threshold = min(faiss.cvar.distance_compute_blas_threshold, 20)
        _, rows = self.faiss_index.search(augment_queries(queries.float(), self.curvature), k, params=params)
        return self._hits(queries, rows)

    def _hits(self, queries: torch.Tensor, rows: np.ndarray) -> list[list[Hit]]:
        """Exact float64 distances of the candidates `rows` `(Q, k)` (-1: none), nearest first (ties by row),
        computed for all queries at once."""
        found = rows >= 0
        candidates = self.embeddings[torch.as_tensor(np.where(found, rows, 0), dtype=torch.long)].double()
        distances = lorentz.distance(queries[:, None, :], candidates, self.curvature).numpy()
        distances = np.where(found, distances, np.inf)
        order = np.lexsort((rows, distances), axis=-1)  # by distance, then row
        rows, distances = np.take_along_axis(rows, order, -1), np.take_along_axis(distances, order, -1)
        ids, modalities, unsafe = self.ids, self.modalities, self.unsafe
        return [
            [Hit(ids[r], modalities[r], d, bool(unsafe[r]), r) for r, d in zip(row, dist, strict=True) if r >= 0]
            for row, dist in zip(rows.tolist(), distances.tolist(), strict=True)
        ]

    # ------------------------------------------------------------------------------------ persistence

    def save(self, folder: str | Path, *, fingerprint: str = "") -> Path:
        """`index.faiss` (FAISS's own format), `items.parquet`, then `index.json` last (it marks completion)."""
        faiss = require("faiss", "scan", feature="search")
        pa = require("pyarrow", "scan", feature="search")
        pq = require("pyarrow.parquet", "scan", feature="search")
        folder = Path(folder)
        atomic_write(folder / "index.faiss", lambda tmp: faiss.write_index(self.faiss_index, str(tmp)))
        dim = self.embeddings.shape[1]
        table = pa.table({
            "id": pa.array(self.ids, pa.string()),
            "modality": pa.array(self.modalities, pa.string()),
            "unsafe": pa.array(self.unsafe.tolist(), pa.bool_()),
            "embedding": pa.array(self.embeddings.float().tolist(), pa.list_(pa.float32(), dim)),
        })  # fmt: skip
        atomic_write(folder / "items.parquet", lambda tmp: pq.write_table(table, tmp))
        meta = dict(format=INDEX_FORMAT, curvature=self.curvature, thresholds=self.thresholds,
                    index_type=self.index_type, nprobe=self.nprobe, count=len(self),
                    fingerprint=fingerprint)  # fmt: skip
        atomic_write_text(folder / "index.json", json.dumps(meta, indent=2, sort_keys=True))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> LorentzIndex:
        faiss = require("faiss", "scan", feature="search")
        pq = require("pyarrow.parquet", "scan", feature="search")
        folder = Path(folder)
        meta = json.loads((folder / "index.json").read_text())
        if meta.get("format") != INDEX_FORMAT:
            raise SearchError(f"{folder}: not a Lorentz index (format {meta.get('format')!r}).")
        table = pq.read_table(folder / "items.parquet")
        faiss_index = faiss.read_index(str(folder / "index.faiss"))
        if faiss_index.ntotal != table.num_rows or table.num_rows != meta["count"]:
            raise SearchError(f"{folder}: the index holds {faiss_index.ntotal} vectors for {table.num_rows} items.")
        column = table.column
        return cls(
            embedding_matrix(column("embedding")), column("id").to_pylist(), column("modality").to_pylist(),
            column("unsafe").to_pylist(), curvature=meta["curvature"], thresholds=meta["thresholds"],
            index_type=meta["index_type"], nprobe=meta.get("nprobe", 16), faiss_index=faiss_index,
        )  # fmt: skip


def embedding_matrix(column: Any) -> np.ndarray:
    """`(N, D)` float32 array of a fixed-size-list Arrow column without nulls."""
    array = column.combine_chunks() if hasattr(column, "combine_chunks") else column
    if array.null_count:
        raise SearchError("embedding column has nulls (rows with errors must be left out first).")
    return array.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(array), array.type.list_size)


def build_index(scan_folder: str | os.PathLike, *, index_type: str = "flat", cache: bool = True) -> LorentzIndex:
    """The index over a scan's embeddings (rows with an error are left out).

    With `cache`, the index is kept in `<scan>/.search-index/` with the digest of the shards it was built
    from (their bytes: verdicts and embeddings), and rebuilt whenever they change (a rescan, a resumed
    scan, a replaced shard): it never serves a verdict the scan no longer holds.
    """
    output = ScanOutput(scan_folder)
    manifest = output.manifest()
    if manifest is None:
        raise SearchError(f"{scan_folder}: no .scan.json; run 'safe-encoders scan' first.")
    fingerprint = scan_digest(output, index_type)
    cached = output.folder / INDEX_FOLDER
    meta = cached / "index.json"
    if cache and meta.exists() and json.loads(meta.read_text()).get("fingerprint") == fingerprint:
        return LorentzIndex.load(cached)
    table = read_scan(scan_folder)
    if "embedding" not in table.column_names:
        raise SearchError(f"{scan_folder}: the scan has no embeddings; rescan with --embeddings into a new folder.")
    total = table.num_rows
    table = table.filter(table.column("error").is_null())
    if table.num_rows == 0:
        raise SearchError(
            f"{scan_folder}: none of the scan's {total} rows has an embedding (every item is an error row, see the "
            "error column): nothing to search. Fix the inputs and scan again."
        )
    index = LorentzIndex(
        embedding_matrix(table.column("embedding")),
        table.column("id").to_pylist(), table.column("modality").to_pylist(), table.column("unsafe").to_pylist(),
        curvature=manifest["curvature"], thresholds=manifest["thresholds"], index_type=index_type,
    )  # fmt: skip
    if cache:
        index.save(cached, fingerprint=fingerprint)
    return index


def scan_digest(output: ScanOutput, index_type: str) -> str:
    """sha256 over the bytes of every shard of a scan (with its name and the manifest) and the index type."""
    digest = hashlib.sha256(json.dumps([index_type, output.manifest()], sort_keys=True).encode())
    for path in output.shards():
        with open(path, "rb") as handle:
            digest.update(path.name.encode() + b"\0" + hashlib.file_digest(handle, "sha256").digest())
    return digest.hexdigest()


def search(
    model: HySAC,
    index: LorentzIndex,
    *,
    texts: Sequence[str] | None = None,
    images: Sequence[Any] | None = None,
    k: int = 10,
    safety: str = "keep",
    gallery: str | None = None,
) -> list[list[Hit]]:
    """Embed text or image queries (image paths, bytes or PIL images) with `model` and search `index`.

    `redirect` uses the model's bound of the query modality (the index's threshold if the model has none).
    """
    if (texts is None) == (images is None):
        raise SearchError("search: pass texts= or images= (one of them).")
    curvature = float(model.curvature.detach())
    if not np.isclose(curvature, index.curvature, rtol=1e-5):
        raise SearchError(
            f"The index was built with curvature {index.curvature}, the model has {curvature}: another model."
        )
    modality: Modality = "text" if texts is not None else "image"
    with torch.no_grad():
        if texts is not None:
            queries = embed_texts(model, list(texts))
        else:
            pixels = model.image_processor(images=[load_image(image) for image in images], return_tensors="pt")
            queries = embed_images(model, pixel_values=pixels["pixel_values"])
    boundary = None
    if model.bounds is not None and model.bounds.has_threshold(modality):
        boundary = model.threshold(modality)
    return index.search(
        queries.float().cpu(), k=k, safety=safety, modality=modality, boundary=boundary, gallery=gallery
    )
