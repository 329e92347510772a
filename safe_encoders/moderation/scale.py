"""Scan on a cluster with Ray Data: Parquet in, one HySAC actor per worker (`map_batches`), Parquet out.

Needs the `scale` extra (`pip install 'safe-encoders[scale]'`). The rows are those of the local scan
(`scan.score_items` makes them) with a null `position`: Ray reads the Parquet input in parallel
blocks, so items are keyed by `(id, modality)` and the input needs an id column. Ray retries failed
tasks within a run; a run that dies as a whole is started again into an empty folder (unlike the
local engine, which resumes). On one machine with several GPUs, `accelerate launch` with the local
engine is simpler.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..extras import require
from .collection import InputSpec, Item, duplicate_positions, rows_to_items
from .scan import (
    ScanConfig,
    ScanError,
    ScanOutput,
    ScanSummary,
    prepare_model,
    rows_to_table,
    scan_manifest,
    score_items,
)


@dataclass(frozen=True)
class RayOptions:
    """Ray resources: `workers` model actors, each with `gpus_per_worker` GPUs and `cpus_per_worker` CPUs.

    Leave CPUs free beyond `workers * cpus_per_worker`: Ray Data's read and write tasks need them.

    `address`: the Ray cluster to join (default: `RAY_ADDRESS`, else a local instance); ignored when
    Ray is already initialised.
    """

    workers: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    device: str | None = None
    address: str | None = None
    blocks: int | None = None  # split the input into this many blocks (default: Ray's choice, by size)


class HySACScorer:
    """The Ray Data actor: loads the model once, then scores Arrow batches of input rows."""

    def __init__(self, model_source: str, spec: dict[str, Any], config: dict[str, Any], device: str | None) -> None:
        import torch

        from ..hysac.model import HySAC

        self.spec = InputSpec(**spec)
        self.config = ScanConfig(**config)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = prepare_model(HySAC.from_pretrained(model_source), device=device, dtype=self.config.dtype)
        self.thresholds = _thresholds(self.model, self.config)
        source = Path(self.spec.source)
        self.root = (
            Path(self.spec.image_root) if self.spec.image_root else (source if source.is_dir() else source.parent)
        )

    def __call__(self, batch: Any) -> Any:
        entries = rows_to_items(self.spec, batch.column_names, iter(batch.to_pylist()), self.root)
        items = [
            Item(-1, i, m, text=p, error=e) if m == "text" else Item(-1, i, m, image=p, error=e)
            for i, m, p, e in entries
        ]
        rows = score_items(
            self.model, items, self.thresholds, embeddings=self.config.embeddings,
            max_frames=self.config.max_frames, batch_size=self.config.batch_size,
        )  # fmt: skip
        for row in rows:
            row["position"] = None  # no global order under Ray; rows are keyed by (id, modality)
        return rows_to_table(rows, self.model.embed_dim if self.config.embeddings else None)


def _thresholds(model: Any, config: ScanConfig) -> dict[str, float | None]:
    from .scan import resolve_thresholds

    return resolve_thresholds(model, config.thresholds)


def scan_with_ray(
    model_source: str, spec: InputSpec, output: str | Path, config: ScanConfig, options: RayOptions | None = None
) -> ScanSummary:
    """Score the Parquet rows of `spec` with `options.workers` actors and write Parquet files to `output`.

    `model_source` must be loadable by every worker (a shared folder or a Hub id).
    """
    ray = require("ray", "scale", feature="--engine ray")
    pq = require("pyarrow.parquet", "scale", feature="--engine ray")
    options = options or RayOptions()
    if spec.kind not in (None, "parquet") or not (spec.source.endswith(".parquet") or Path(spec.source).is_dir()):
        raise ScanError("--engine ray reads Parquet: pass a .parquet file or a folder of them (--kind parquet).")
    if spec.id_column is None:
        raise ScanError("--engine ray needs --id-column: Ray reads blocks in parallel, so row numbers are not ids.")
    output = Path(output)
    if output.exists() and any(output.iterdir()):
        raise ScanError(f"{output} is not empty: a Ray scan starts from scratch; pick a new folder.")
    spec = dataclasses.replace(spec, kind="parquet")
    if config.dedupe != "refuse":
        raise ScanError("--engine ray refuses duplicate ids (--dedupe refuse): it has no order to tell the first.")
    duplicate_positions(spec, refuse=True)  # before any worker starts
    # The manifest needs the model's curvature and thresholds: the driver loads it once (on the CPU).
    from ..hysac.model import HySAC

    driver_model = HySAC.from_pretrained(model_source)
    manifest = scan_manifest(driver_model, spec, config, _thresholds(driver_model, config)) | {"engine": "ray"}
    del driver_model
    if not ray.is_initialized():
        ray.init(address=options.address, ignore_reinit_error=True)
    dataset = ray.data.read_parquet(spec.source)
    if options.blocks is not None:  # small inputs come as one block, which only one actor would score
        dataset = dataset.repartition(options.blocks)
    scored = dataset.map_batches(
        HySACScorer,
        fn_constructor_kwargs=dict(
            model_source=model_source, spec=spec.to_dict(), config=dataclasses.asdict(config), device=options.device
        ),
        batch_size=config.batch_size,
        batch_format="pyarrow",
        concurrency=options.workers,
        num_gpus=options.gpus_per_worker or None,
        num_cpus=options.cpus_per_worker,
    )
    store = ScanOutput(output)
    with store.lock(config):  # a second run into the same folder is refused while this one writes
        if any(path for path in output.iterdir() if not path.name.startswith(".lock-")):
            raise ScanError(f"{output} is not empty: another scan wrote to it; pick a new folder.")
        store.claim(manifest)
        scored.write_parquet(str(output))
    tables = [pq.read_table(path, columns=["unsafe", "error"]) for path in ScanOutput(output).shards()]
    rows = sum(table.num_rows for table in tables)
    unsafe = sum(bool(value) for table in tables for value in table.column("unsafe").to_pylist())
    errors = rows - sum(table.column("error").null_count for table in tables)
    return ScanSummary(rows, unsafe, errors, 0, output)
