"""Run lmms-eval's tasks for each condition (``llava``, ``llava+safe``) through the ``llava_hf_safe`` model
(:mod:`safe_encoders.lmms_eval`), one (task, condition) pair at a time, and write the table.

Resumable per pair: each pair's lmms-eval output folder (lmms-eval's own ``*_results.json`` and
``*_samples_<task>.jsonl``, plus our ``pair.json``) is written whole with :func:`safe_encoders.atomic.atomic_folder`,
so after a kill -9 a pair is either complete or absent; a rerun skips the complete ones and never loads a model
whose pairs are all done. ``vlm_bench.json`` holds the settings of the run: resuming with other settings is
refused rather than mixing numbers of two runs in one table.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from eval.errors import EvalError, MissingDependencyError
from safe_encoders.atomic import atomic_folder, atomic_write_text

logger = logging.getLogger("safe_encoders.eval")

SETTINGS_FILE = "vlm_bench.json"
PAIR_FILE = "pair.json"
RUNS_FOLDER = "lmms_eval"
DEFAULT_TASKS: tuple[str, ...] = ("mme", "mmmu_val", "ai2d", "pope")


class VLMBenchError(EvalError, ValueError):
    """A bad option, a task lmms-eval does not know, or an --out folder holding another run."""


@dataclass(frozen=True)
class Condition:
    """One row of the table: the same lmms-eval model with the stock or the Safe-CLIP tower."""

    name: str
    safe: bool


#: The conditions, in the table's order; the difference row is the last minus the first.
CONDITIONS: dict[str, Condition] = {c.name: c for c in (Condition("llava", safe=False), Condition("llava+safe", True))}


@dataclass
class VLMBenchConfig:
    out: Path
    model: str = "llava-hf/llava-1.5-7b-hf"
    """A llava-hf LLaVA 1.5 / 1.6 checkpoint (Hub id or folder), loaded by lmms-eval's ``llava_hf``."""
    safe_checkpoint: str = "auto"
    safe_revision: str | None = None
    tasks: tuple[str, ...] = DEFAULT_TASKS
    conditions: tuple[str, ...] = tuple(CONDITIONS)
    include_path: tuple[Path, ...] = ()
    """Folders of extra lmms-eval task YAMLs (lmms-eval's ``--include_path``)."""
    limit: int | None = None
    device: str = "cpu"
    dtype: str = "float32"
    bootstrap_iters: int = 0
    seed: int = 0

    def settings(self) -> dict[str, Any]:
        """What must match for two runs' pairs to share one table (not the task and condition lists: a resumed
        run may add tasks or conditions)."""
        record = {k: v for k, v in asdict(self).items() if k not in ("out", "tasks", "conditions")}
        record["include_path"] = [str(Path(p).resolve()) for p in self.include_path]
        return record


def require_lmms_eval() -> None:
    """lmms-eval imports here, or one error saying how to install it."""
    try:
        import lmms_eval.evaluator
        import lmms_eval.models  # noqa: F401
    except ImportError as error:
        raise MissingDependencyError(
            f"eval vlm-bench needs lmms-eval ({error}): pip install -e '.[vlm-bench]' and "
            "pip install --no-deps lmms-eval==0.7.3 (its own requirements would replace your torch build)"
        ) from error


def _filelock_compatible() -> None:
    """lmms-eval 0.7.3's ``simple_evaluate`` patches ``filelock._api`` (filelock 3.x) to avoid a cross-rank dataset
    lock deadlock; filelock 4 has no such module and the patch fails. Where (and only where) it is missing, the
    patch is marked done: the evaluation itself is lmms-eval's, the multi-rank dataset-lock workaround is skipped."""
    import importlib.util

    from lmms_eval import evaluator

    if importlib.util.find_spec("filelock._api") is None:
        evaluator._enable_reentrant_filelocks._patched = True


def model_args(cfg: VLMBenchConfig, condition: Condition) -> str:
    """lmms-eval's ``--model_args`` of ``condition``: the same string but for ``safe=``."""
    for name, value in (("--model", cfg.model), ("--safe-checkpoint", cfg.safe_checkpoint)):
        if "," in value:
            raise VLMBenchError(f"{name} {value!r}: lmms-eval's model_args cannot hold a comma")
    # device_map: lmms-eval 0.7.3 passes its default "" to from_pretrained, which transformers 5 refuses.
    args = [f"pretrained={cfg.model}", f"dtype={cfg.dtype}", f"device_map={cfg.device}", f"safe={condition.safe}"]
    if condition.safe:
        args.append(f"safe_checkpoint={cfg.safe_checkpoint}")
        if cfg.safe_revision:
            args.append(f"safe_revision={cfg.safe_revision}")
    return ",".join(args)


def _check_settings(cfg: VLMBenchConfig) -> None:
    """Write ``vlm_bench.json``, or (resuming) refuse when the folder holds a run with other settings."""
    path = cfg.out / SETTINGS_FILE
    settings = cfg.settings()
    if path.is_file():
        before = json.loads(path.read_text(encoding="utf-8"))
        differ = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))
        if differ:
            raise VLMBenchError(
                f"--out {cfg.out} holds a vlm-bench run with other settings ({', '.join(differ)}); use a new --out"
            )
        return
    cfg.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(settings, indent=2, sort_keys=True) + "\n")


def pair_folder(out: Path, condition: str, task: str) -> Path:
    return Path(out) / RUNS_FOLDER / condition / task


def read_pair(out: Path, condition: str, task: str) -> dict[str, Any] | None:
    """The record of a finished pair (None when the pair has not finished)."""
    path = pair_folder(out, condition, task) / PAIR_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def task_metrics(results: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """``{task or subtask: {metric: value}}`` from lmms-eval's ``results["results"]``: every ``metric,filter`` entry
    but the standard errors, ``,none`` dropped; a value that is not a finite number is None (never a score)."""
    out: dict[str, dict[str, float | None]] = {}
    for name, entries in results.get("results", {}).items():
        metrics: dict[str, float | None] = {}
        for key, value in entries.items():
            if key == "alias" or "," not in key or "_stderr" in key.split(",")[0]:
                continue
            metric = key.removesuffix(",none")
            try:
                number = float(value)
            except (TypeError, ValueError):
                number = None
            metrics[metric] = number if number is not None and math.isfinite(number) else None
        if metrics:
            out[name] = metrics
    return out


class _Runner:
    """Runs one pair at a time; the model is loaded for each pending pair (lmms-eval's ``evaluate`` ends with
    ``lm.clean()``, which deletes the model from the instance), never for a finished one."""

    def __init__(self, cfg: VLMBenchConfig) -> None:
        from lmms_eval.tasks import TaskManager

        from safe_encoders.lmms_eval import register

        self.cfg = cfg
        register()
        _filelock_compatible()
        self.tasks = TaskManager("WARNING", include_path=[str(p) for p in cfg.include_path] or None)
        missing = [t for t in cfg.tasks if t not in self.tasks.match_tasks([t])]
        if missing:
            raise VLMBenchError(
                f"--tasks: lmms-eval has no task {', '.join(missing)} (lmms-eval --tasks list shows its tasks; "
                "--include-path adds a folder of task YAMLs)"
            )

    def load(self, condition: Condition):
        from lmms_eval.models import get_model

        from safe_encoders import is_safe
        from safe_encoders.lmms_eval import MODEL_ID

        args = model_args(self.cfg, condition)
        # lmms-eval's chat llava_hf: its simple one renders no <image> token through a llava-hf checkpoint's own
        # (structured-content) chat template under transformers 5.
        lm = get_model(MODEL_ID).create_from_arg_string(args, {"batch_size": 1, "device": self.cfg.device})
        if is_safe(lm.model) is not condition.safe:  # the row's label must be what the forward pass really uses
            raise VLMBenchError(f"condition {condition.name}: the loaded model reports is_safe={is_safe(lm.model)}")
        return lm, args

    def run_pair(self, condition: Condition, task: str) -> dict[str, Any]:
        from lmms_eval import evaluator
        from lmms_eval.loggers import EvaluationTracker
        from lmms_eval.utils import get_datetime_str

        cfg = self.cfg
        lm, args = self.load(condition)
        swap = lm.swap
        with atomic_folder(pair_folder(cfg.out, condition.name, task)) as tmp:
            tracker = EvaluationTracker(output_path=str(tmp))
            stamp = get_datetime_str()
            results = evaluator.simple_evaluate(
                model=lm,
                model_args=args,
                tasks=[task],
                task_manager=self.tasks,
                limit=cfg.limit,
                bootstrap_iters=cfg.bootstrap_iters,
                log_samples=True,
                evaluation_tracker=tracker,
                random_seed=cfg.seed,
                datetime_str=stamp,
                verbosity="WARNING",
            )
            if results is None:
                raise VLMBenchError(f"lmms-eval returned no results for {task} ({condition.name})")
            samples = results.pop("samples")
            tracker.save_results_aggregated(results=results, samples=samples, datetime_str=stamp)
            for name in results["configs"]:
                tracker.save_results_samples(task_name=name, samples=samples[name])
            written = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*_results.json"))
            if not written:  # lmms-eval logs a failed save as a warning; a pair without its files is not done
                raise VLMBenchError(f"lmms-eval wrote no results file for {task} ({condition.name}) in {tmp}")
            record = {
                "condition": condition.name,
                "task": task,
                "safe": condition.safe,
                "model_args": args,
                "swap": swap,
                "metrics": task_metrics(results),
                "lmms_eval_results": written,
                "lmms_eval": metadata.version("lmms-eval"),
            }
            atomic_write_text(tmp / PAIR_FILE, json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
        return record


def run_vlm_bench(cfg: VLMBenchConfig) -> list[dict[str, Any]]:
    """Every pending (task, condition) pair through lmms-eval, then ``vlm_bench.{csv,md,tex}``; the pair records."""
    from eval.vlm_bench.report import write_report

    unknown = [c for c in cfg.conditions if c not in CONDITIONS]
    if unknown or not cfg.conditions:
        raise VLMBenchError(f"--conditions: unknown {unknown or 'none given'}; known: {', '.join(CONDITIONS)}")
    if not cfg.tasks:
        raise VLMBenchError("--tasks: give at least one lmms-eval task")
    for folder in cfg.include_path:
        if not Path(folder).is_dir():
            raise VLMBenchError(f"--include-path {folder}: not a folder")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # every process would evaluate everything into one folder
        raise VLMBenchError(
            "vlm-bench runs in one process (lmms-eval 0.7.3's llava_hf cannot shard with transformers 5 here): "
            "run it without accelerate launch / torchrun"
        )
    require_lmms_eval()
    runner = _Runner(cfg)  # checks the task names first
    _check_settings(cfg)
    tasks = list(dict.fromkeys(cfg.tasks))
    records = []
    for condition in (c for c in CONDITIONS.values() if c.name in cfg.conditions):  # the table's order
        for task in tasks:
            if read_pair(cfg.out, condition.name, task) is None:
                logger.info("vlm-bench: %s on %s", condition.name, task)
                runner.run_pair(condition, task)
        records += [read_pair(cfg.out, condition.name, t) for t in tasks]
    write_report(records, cfg.out)
    return records
