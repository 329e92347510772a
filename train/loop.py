"""The Safe-CLIP training loop on accelerate: accumulation, mixed precision, validation with
retrieval recall, early stopping, a checkpoint per epoch (and every N steps) and exact resume.

Exact resume: a checkpoint holds the trainable weights, the optimizer and scheduler states, every
RNG state and the data position (epoch, batches done). The order of the data is a pure function of
(seed, epoch), and the data loader draws from its own generator, so a resumed run replays exactly
the batches and dropout masks an uninterrupted run would have seen. Checkpoints are written only
at optimizer-step boundaries. Nothing is pickled: tensors go to safetensors, the rest to JSON.

A NaN or infinite loss (checked before the optimizer step) or trainable weight (checked after it) stops the
run with :class:`train.finite.NonFiniteError` before anything of that step is saved: the checkpoints and
``best_adapters.safetensors`` stay those of the last good step.

The parts the loop calls: :class:`train.data.EpochSampler` (the data order), :mod:`train.checkpoints`,
:mod:`train.resume_config` (the config check of a resume), :mod:`train.validation` and :mod:`train.metrics_log`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset

from safe_encoders.atomic import atomic_write
from train.checkpoints import (
    Processes,
    find_resume_checkpoint,
    list_checkpoints,
    save_checkpoint,
    seed_everything,
    set_aside_newer,
)
from train.config import TrainConfig, save_config
from train.data import EpochSampler, batch_to
from train.finite import NonFiniteError, describe, non_finite_names
from train.methods import References, check_model, method_of
from train.metrics_log import MetricsLog
from train.model import CachedReferences, LiveReferences, TwoTowerModel
from train.optim import build_optimizer, lr_lambda
from train.resume_config import check_resume_config
from train.validation import evaluate, validation_metric_names


@dataclass
class RunState:
    """Where a run stands: what a checkpoint saves (as JSON) and a resume restores."""

    epoch: int = 0
    batches_done: int = 0
    """Batches of the current epoch already trained on (at an optimizer-step boundary)."""
    global_step: int = 0
    best_metric: float | None = None
    best_epoch: int | None = None
    bad_epochs: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped_early: bool = False
    config_digest: str = ""
    config: dict[str, Any] = field(default_factory=dict)

    def restore(self, saved: dict[str, Any]) -> None:
        """Take the progress of a checkpoint's state; the config (checked before) stays this run's, so that new
        checkpoints carry the config they are written with."""
        for name in self.__dataclass_fields__:
            if name in saved and name not in ("config_digest", "config"):
                setattr(self, name, saved[name])


@dataclass
class TrainResult:
    output_dir: Path
    global_step: int
    epochs_run: int
    best_epoch: int | None
    best_metric: float | None
    stopped_early: bool
    history: list[dict[str, float]] = field(default_factory=list)


def _save_tensors_atomically(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """``save_file`` through a temporary file: a reader (or a killed run) never sees half a file."""
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def _accelerator(factory: Callable[..., Any], mixed_precision: str) -> Any:
    """An Accelerator with this run's precision. accelerate keeps one process-wide state and refuses a
    second precision in the same process; when not distributed (a notebook, the demo after a test
    run) that state is dropped and rebuilt instead."""
    from accelerate.state import AcceleratorState, PartialState

    state = AcceleratorState._shared_state
    if state and str(state.get("mixed_precision")) != mixed_precision and not PartialState().use_distributed:
        AcceleratorState._reset_state()
    # accelerate runs several CPU processes as one distributed job (gloo) only when told cpu=True
    multi_cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    return factory(mixed_precision=mixed_precision, **({"cpu": True} if multi_cpu else {}))


def run_training(
    cfg: TrainConfig,
    model: TwoTowerModel,
    train_set: Dataset,
    val_set: Dataset | None,
    collate_fn: Callable[[list[Any]], dict[str, Any]],
    *,
    resume: bool = True,
    on_step: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train the trainable tensors of ``model`` with the loss of ``cfg.method``; returns with the best weights loaded.

    The method (``train.methods.METHODS``) gives the loss, whether reference embeddings are built, what
    follows each optimizer step and how validation ranks retrieval; the loop is the same for all. HySAC's
    learned scalars train, checkpoint and resume with the LoRA factors.

    ``train_set`` / ``val_set`` items are batched by ``collate_fn`` into the layout of
    :class:`train.data.QuadrupletCollator` (``index`` must be the dataset index). With ``resume`` the
    run continues from the newest complete checkpoint in ``cfg.output_dir``. ``on_step`` is called
    after every optimizer step with the global step (tests use it to simulate a crash).
    """
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    cfg.validate()
    method = method_of(cfg)
    check_model(method, model)
    known = validation_metric_names() if val_set is not None else []
    if val_set is not None and cfg.early_stopping_metric not in known:
        raise ValueError(f"early_stopping_metric {cfg.early_stopping_metric!r} is not computed; one of {known}")
    accelerator = _accelerator(Accelerator, cfg.mixed_precision)
    device, main = accelerator.device, accelerator.is_main_process
    out = Path(cfg.output_dir)
    rank, world = accelerator.process_index, accelerator.num_processes
    checkpoint = find_resume_checkpoint(out, rank, world) if resume else None  # read whole and checked
    if checkpoint is not None:  # before config.yaml is rewritten: on a refusal it still holds the run's config
        check_resume_config(cfg, checkpoint.path, checkpoint.state)
    accelerator.wait_for_everyone()  # every process has chosen before damaged checkpoints are set aside
    if main and resume:
        set_aside_newer(out, checkpoint)
    out.mkdir(parents=True, exist_ok=True)
    if main:
        save_config(cfg, out / "config.yaml")
    # a fresh run's RNG, one stream per process (dropout masks differ between processes, as with accelerate's
    # set_seed(device_specific=True)); a resumed run takes each process's saved state instead
    seed_everything(cfg.seed + accelerator.process_index)
    model.to(device)

    def loader(dataset: Dataset, epoch: int, skip: int = 0, shuffle: bool = True, shard: bool = True) -> DataLoader:
        sampler = EpochSampler(
            len(dataset),
            cfg.seed,
            epoch,
            skip,
            accelerator.process_index if shard else 0,
            accelerator.num_processes if shard else 1,
            shuffle=shuffle,
        )
        # own generator: creating an iterator must not consume the global RNG (exact resume)
        return DataLoader(
            dataset,
            batch_size=cfg.data.batch_size,
            sampler=sampler,
            collate_fn=collate_fn,
            num_workers=cfg.data.num_workers,
            generator=torch.Generator().manual_seed(cfg.seed),
        )

    def references_for(dataset: Dataset, name: str) -> References | None:
        if not method.needs_references:
            return None
        if not cfg.cache_references:
            return LiveReferences(model)
        fingerprint = json.dumps([cfg.base_model, name, len(dataset), cfg.data.__dict__], sort_keys=True, default=str)
        path = out / f"references-{name}.safetensors"
        cache = CachedReferences.load(path, fingerprint)
        if cache is None:
            cache = CachedReferences.build(
                model,
                (batch_to(b, device) for b in loader(dataset, 0, shuffle=False, shard=False)),
                len(dataset),
                device,
            )
            if main:
                cache.save(path, fingerprint)
        return cache

    train_refs = references_for(train_set, "train")
    val_refs = references_for(val_set, "val") if val_set is not None else None

    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in trainable]
    optimizer = build_optimizer(cfg.optim, model)
    batches_per_epoch = len(loader(train_set, 0))
    steps_per_epoch = math.ceil(batches_per_epoch / cfg.optim.grad_accum_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, steps_per_epoch * cfg.optim.epochs))
    prepared_model, optimizer = accelerator.prepare(model, optimizer)
    log = MetricsLog(out / "metrics.jsonl", main, out / "tensorboard" if cfg.tensorboard else None)

    def save(state: RunState) -> None:  # every process: each saves its own RNG state
        save_checkpoint(
            out,
            asdict(state),
            adapters=lambda: accelerator.unwrap_model(prepared_model).trainable_state_dict(),
            optimizer=optimizer,
            scheduler=scheduler,
            keep=cfg.keep_checkpoints,
            processes=Processes(rank, world, accelerator.wait_for_everyone),
        )

    def diverged(state: RunState, what: str) -> NonFiniteError:
        saved = list_checkpoints(out)
        kept = f"the newest checkpoint, {saved[-1].name}, precedes it" if saved else "no checkpoint was written"
        clipping = "" if cfg.optim.max_grad_norm is not None else " or with optim.max_grad_norm"
        return NonFiniteError(
            f"training diverged at step {state.global_step + 1} (epoch {state.epoch}): {what}; nothing of that step "
            f"was saved ({kept}); train again, in a new run folder, with a lower optim.lr "
            f"(now {cfg.optim.lr:g}){clipping}"
        )

    try:
        state = RunState(config_digest=cfg.digest(), config=cfg.to_dict())
        if checkpoint is not None:
            checkpoint.apply(model.load_trainable_state_dict, optimizer, scheduler)
            # the config (checked above) stays this run's: new checkpoints carry the config they are written with
            state.restore(checkpoint.state)
            log.trim(state.global_step)
        elif main:
            log.path.unlink(missing_ok=True)

        sign = 1.0 if cfg.early_stopping_mode == "min" else -1.0
        start_time = time.perf_counter()
        while state.epoch < cfg.optim.epochs and not state.stopped_early:
            epoch = state.epoch
            batches = loader(train_set, epoch, skip=state.batches_done * cfg.data.batch_size)
            prepared_model.train()
            accum = cfg.optim.grad_accum_steps
            bar = tqdm(
                total=batches_per_epoch,
                initial=state.batches_done,
                disable=not (cfg.progress and main),
                desc=f"epoch {epoch}",
                leave=False,
            )
            bad_losses = torch.zeros((), device=device)  # non-finite losses seen (any one stops the run)
            for i, batch in enumerate(batches, start=state.batches_done):
                group_start = (i // accum) * accum
                group_size = min(accum, batches_per_epoch - group_start)
                last_in_group = i == group_start + group_size - 1
                batch = batch_to(batch, device)
                ctx = accelerator.no_sync(prepared_model) if not last_in_group else contextlib.nullcontext()
                with ctx:
                    emb = prepared_model(batch)
                    with accelerator.autocast():
                        loss, terms = method.loss(cfg, model, emb, batch, train_refs)
                    bad_losses += ~torch.isfinite(loss.detach())
                    accelerator.backward(loss / group_size)
                bar.update(1)
                if not last_in_group:
                    continue
                if accelerator.reduce(bad_losses, reduction="sum").item():  # every process stops alike
                    raise diverged(state, "the loss is NaN or infinite")
                grad_norm = None
                if cfg.optim.max_grad_norm is not None:
                    grad_norm = float(accelerator.clip_grad_norm_(params, cfg.optim.max_grad_norm))
                optimizer.step()
                method.after_step(model)
                bad_weights = non_finite_names(trainable)  # the same on every process (gradients are shared)
                if bad_weights:
                    raise diverged(state, f"{describe(bad_weights)} hold NaN or infinite values after the update")
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                state.global_step += 1
                state.batches_done = i + 1
                if state.global_step % cfg.log_every_steps == 0:
                    record = {
                        "step": state.global_step,
                        "epoch": epoch,
                        "loss": loss.item(),
                        "lr": scheduler.get_last_lr()[0],
                        "time": time.perf_counter() - start_time,
                        **{k: v.item() for k, v in terms.items()},
                    }
                    if grad_norm is not None:
                        record["grad_norm"] = grad_norm
                    log.write(record)
                    bar.set_postfix(loss=f"{loss.item():.4f}")
                if cfg.save_every_steps and state.global_step % cfg.save_every_steps == 0:
                    save(state)
                if on_step is not None:
                    on_step(state.global_step)
            bar.close()

            epoch_record: dict[str, Any] = {"step": state.global_step, "epoch": epoch}
            if val_set is not None:
                unwrapped = accelerator.unwrap_model(prepared_model)
                with accelerator.autocast():
                    epoch_record.update(
                        evaluate(unwrapped, loader(val_set, 0, shuffle=False, shard=False), val_refs, cfg, device)
                    )
                value = epoch_record[cfg.early_stopping_metric]
                if state.best_metric is None or sign * value < sign * state.best_metric:
                    state.best_metric, state.best_epoch, state.bad_epochs = value, epoch, 0
                    if main:
                        _save_tensors_atomically(
                            out / "best_adapters.safetensors",
                            {k: v.cpu().contiguous() for k, v in unwrapped.trainable_state_dict().items()},
                            metadata={"epoch": str(epoch)},
                        )
                else:
                    state.bad_epochs += 1
                    state.stopped_early = state.bad_epochs >= cfg.patience
            state.history.append(epoch_record)
            log.write(epoch_record)
            state.epoch, state.batches_done = epoch + 1, 0
            save(state)

        unwrapped = accelerator.unwrap_model(prepared_model)
        best_path = out / "best_adapters.safetensors"
        if state.best_epoch is not None and best_path.exists():
            unwrapped.load_trainable_state_dict({k: v.to(device) for k, v in load_file(str(best_path)).items()})
        return TrainResult(
            output_dir=out,
            global_step=state.global_step,
            epochs_run=state.epoch,
            best_epoch=state.best_epoch,
            best_metric=state.best_metric,
            stopped_early=state.stopped_early,
            history=state.history,
        )
    finally:
        log.close()
