import json

import pytest
import torch

from tests.train.synthetic_builders import encoded_worlds
from train.checkpoints import list_checkpoints
from train.config import TrainConfig, load_config
from train.data import EpochSampler, stack_encoded
from train.loop import run_training
from train.model import CachedReferences, LiveReferences, SafeClipModel
from train.tiny_clip import tiny_clip


@pytest.fixture(scope="module")
def data(tokenizer):
    return encoded_worlds(tokenizer, 48, 24)


def make_model(tokenizer, cfg: TrainConfig) -> SafeClipModel:
    torch.manual_seed(0)
    text, vision = tiny_clip(tokenizer, 32, width=32, layers=1, projection_dim=32)
    model = SafeClipModel(text, vision, cfg.lora)
    # start from non-zero LoRA B factors so that the first steps already change the embeddings
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    return model


def small_config(tmp_path, name, **over) -> TrainConfig:
    overrides = [
        f"output_dir={tmp_path / name}",
        "data.batch_size=8",
        "optim.epochs=2",
        "progress=false",
        "lora.rank=4",
        "lora.alpha=4",
        "optim.lr=1e-2",
        "save_every_steps=2",
        "keep_checkpoints=10",
    ]
    overrides += [f"{k}={v}" for k, v in over.items()]
    return load_config(None, overrides)


def test_epoch_sampler_is_a_function_of_seed_and_epoch():
    a = EpochSampler(20, seed=3, epoch=1).indices
    assert a == EpochSampler(20, seed=3, epoch=1).indices and sorted(a) == list(range(20))
    assert a != EpochSampler(20, seed=3, epoch=2).indices
    assert EpochSampler(20, seed=3, epoch=1, skip=5).indices == a[5:]
    shards = [EpochSampler(21, 3, 1, rank=r, world_size=2).indices for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 10 and not set(shards[0]) & set(shards[1])


def test_cached_references_equal_original_encoders_and_never_drift(tokenizer, data, tmp_path):
    train_set, _ = data
    model = make_model(tokenizer, small_config(tmp_path, "unused"))
    torch.manual_seed(0)
    text0, vision0 = tiny_clip(tokenizer, 32, width=32, layers=1, projection_dim=32)  # same init as make_model
    batch = stack_encoded([train_set[i] for i in range(len(train_set))])
    cache = CachedReferences.build(model, [batch], len(train_set))
    with torch.no_grad():
        t0 = text0(input_ids=batch["safe_input_ids"], attention_mask=batch["safe_attention_mask"]).text_embeds
        v0 = vision0(pixel_values=batch["safe_pixel_values"]).image_embeds
        lora_t = model.encode_text(batch["safe_input_ids"], batch["safe_attention_mask"])
    torch.testing.assert_close(cache.text, t0, rtol=0, atol=1e-6)
    torch.testing.assert_close(cache.image, v0, rtol=0, atol=1e-6)
    assert (lora_t - t0).abs().max() > 1e-4  # the LoRA model itself differs from T0
    live_t, live_v = LiveReferences(model)(batch)
    torch.testing.assert_close(live_t, t0, rtol=0, atol=1e-6)
    torch.testing.assert_close(live_v, v0, rtol=0, atol=1e-6)
    sub = {k: v[[3, 1]] for k, v in batch.items() if torch.is_tensor(v)}
    ct, cv = cache(sub)
    torch.testing.assert_close(ct, t0[[3, 1]])
    torch.testing.assert_close(cv, v0[[3, 1]])


class Crash(RuntimeError):
    pass


def test_run_killed_mid_epoch_and_resumed_ends_with_identical_weights(tokenizer, data, tmp_path):
    train_set, val_set = data
    # 48 items / batch 8 = 6 batches; accumulation 2 -> 3 optimizer steps per epoch, 6 in all
    cfg_full = small_config(tmp_path, "full", **{"optim.grad_accum_steps": 2, "save_every_steps": 1})
    full_model = make_model(tokenizer, cfg_full)
    full = run_training(cfg_full, full_model, train_set, val_set, stack_encoded)
    assert full.global_step == 6 and full.epochs_run == 2
    final_full = list_checkpoints(cfg_full.output_dir)[-1]

    cfg = small_config(tmp_path, "crash", **{"optim.grad_accum_steps": 2, "save_every_steps": 1})

    def crash(step: int) -> None:
        if step == 5:  # epoch 1, after its second step; checkpoint of step 5 is written before the hook
            raise Crash

    with pytest.raises(Crash):
        run_training(cfg, make_model(tokenizer, cfg), train_set, val_set, stack_encoded, on_step=crash)
    import shutil

    # throw away the newest checkpoint too, so the resume starts mid-epoch one step further back
    shutil.rmtree(list_checkpoints(cfg.output_dir)[-1])
    state = json.loads((list_checkpoints(cfg.output_dir)[-1] / "state.json").read_text())
    assert state["epoch"] == 1 and state["batches_done"] == 2 and state["global_step"] == 4
    resumed_model = make_model(tokenizer, cfg)
    with torch.no_grad():  # scramble the weights: all of them must come from the checkpoint
        for p in resumed_model.parameters():
            if p.requires_grad:
                p.add_(1.0)
    resumed = run_training(cfg, resumed_model, train_set, val_set, stack_encoded)
    assert resumed.global_step == 6
    from safetensors.torch import load_file

    a = load_file(str(final_full / "adapters.safetensors"))
    b = load_file(str(list_checkpoints(cfg.output_dir)[-1] / "adapters.safetensors"))
    assert a.keys() == b.keys() and len(a) > 0
    for key in a:
        assert torch.equal(a[key], b[key]), key

    # the metrics log of the resumed run has exactly the lines of the uninterrupted one (times aside)
    def lines(name):
        return [
            {k: v for k, v in json.loads(ln).items() if k != "time"}
            for ln in (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        ]

    assert lines("full") == lines("crash")


def test_validation_early_stopping_and_best_weights(tokenizer, data, tmp_path):
    """The validation metric worsens on a schedule: after epoch 0 every epoch ends with the LoRA B factors
    pushed far off (noise of growing size, added after the epoch's last step, before its validation). With
    patience 2 the run must stop after epoch 2 and hand back epoch 0's weights, the ones in
    best_adapters.safetensors."""
    from safetensors.torch import load_file

    train_set, val_set = data
    # also exercises the fallback references (adapter-disabled forwards) and bf16 autocast
    cfg = small_config(
        tmp_path,
        "es",
        **{
            "optim.epochs": 6,
            "patience": 2,
            "cache_references": "false",
            "mixed_precision": "bf16",
            "early_stopping_metric": "val_loss",
            "early_stopping_mode": "min",
            "save_every_steps": 0,
        },
    )
    model = make_model(tokenizer, cfg)
    steps_per_epoch = len(train_set) // cfg.data.batch_size  # 48 / 8
    noise = torch.Generator().manual_seed(1)
    pushed = {}

    def worsen(step):
        epoch, last = divmod(step, steps_per_epoch)
        if last == 0 and epoch >= 2:  # the last step of epochs 1, 2, ...
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if "lora_B" in name:
                        p.add_(torch.randn(p.shape, generator=noise) * 2.0 * (epoch - 1))
            pushed[epoch - 1] = {k: v.clone() for k, v in model.trainable_state_dict().items()}

    result = run_training(cfg, model, train_set, val_set, stack_encoded, on_step=worsen)
    values = [h["val_loss"] for h in result.history]
    assert len(values) == 3 and values[1] > values[0] and values[2] > values[0]  # the schedule took hold
    assert result.stopped_early and result.epochs_run == 3 and result.global_step == 3 * steps_per_epoch
    assert (result.best_epoch, result.best_metric) == (0, values[0])
    best = load_file(str(tmp_path / "es" / "best_adapters.safetensors"))
    restored = model.trainable_state_dict()
    assert best.keys() == restored.keys()
    assert all(torch.equal(restored[k].cpu(), best[k]) for k in best)  # epoch 0's weights are back
    assert any(not torch.equal(pushed[2][k].cpu(), best[k]) for k in best)  # ... not the last epoch's
    assert all(0.0 <= h["val_unsafe_text_top1_unsafe_share"] <= 1.0 for h in result.history)
    records = [json.loads(ln) for ln in (tmp_path / "es" / "metrics.jsonl").read_text().splitlines()]
    assert any("cos_text_unsafe" in r for r in records) and any("val_loss" in r for r in records)
    with pytest.raises(ValueError, match="not computed"):
        bad = small_config(tmp_path, "bad", **{"early_stopping_metric": "val_nope", "optim.epochs": 1})
        run_training(bad, make_model(tokenizer, bad), train_set, val_set, stack_encoded)


def test_resume_refuses_a_changed_config_and_accepts_changed_reporting(tokenizer, data, tmp_path, caplog):
    from train.resume_config import ResumeConfigError

    train_set, val_set = data
    cfg = small_config(tmp_path, "digest", **{"optim.epochs": 1, "save_every_steps": 0})
    done = run_training(cfg, make_model(tokenizer, cfg), train_set, val_set, stack_encoded)
    config_yaml = (tmp_path / "digest" / "config.yaml").read_text()
    newest = list_checkpoints(cfg.output_dir)[-1]
    assert json.loads((newest / "state.json").read_text())["config_digest"] == cfg.digest()

    changed = small_config(tmp_path, "digest", **{"optim.epochs": 1, "save_every_steps": 0, "optim.lr": 0.5})
    with pytest.raises(ResumeConfigError, match=r"optim\.lr: 0\.01 -> 0\.5.*another output_dir"):
        run_training(changed, make_model(tokenizer, changed), train_set, val_set, stack_encoded)
    assert (tmp_path / "digest" / "config.yaml").read_text() == config_yaml  # not overwritten
    assert list_checkpoints(cfg.output_dir)[-1] == newest

    # where and how often the run reports may change: a warning, and the new config is the run's from now on
    reporting = small_config(
        tmp_path, "digest", **{"optim.epochs": 1, "save_every_steps": 0, "log_every_steps": 3, "tensorboard": False}
    )
    with caplog.at_level("WARNING", logger="train"):
        again = run_training(reporting, make_model(tokenizer, reporting), train_set, val_set, stack_encoded)
    assert again.global_step == done.global_step
    assert "log_every_steps" in caplog.text and "tensorboard" in caplog.text

    # a checkpoint written before checkpoints held their config: the digest alone decides
    state = json.loads((newest / "state.json").read_text())
    del state["config"]
    (newest / "state.json").write_text(json.dumps({**state, "format_version": 2}))
    (newest / "state.json.sha256").unlink()  # the format of then: no digest of state.json
    with pytest.raises(ResumeConfigError, match="config digest"):
        run_training(changed, make_model(tokenizer, changed), train_set, val_set, stack_encoded)


def test_metrics_log_closes_its_tensorboard_writer_even_when_the_run_fails(tokenizer, data, tmp_path, monkeypatch):
    from train.metrics_log import MetricsLog

    class Writer:  # stands in for tensorboard's SummaryWriter (tensorboard is optional)
        def __init__(self):
            self.scalars, self.closed = [], 0

        def add_scalar(self, key, value, step):
            self.scalars.append((key, step))

        def close(self):
            self.closed += 1

    log = MetricsLog(tmp_path / "metrics.jsonl", True, None)
    log.writer = writer = Writer()
    log.write({"step": 1, "epoch": 0, "loss": 0.5})
    log.close()
    log.close()  # twice is harmless
    assert writer.scalars == [("loss", 1)] and writer.closed == 1 and log.writer is None
    log.write({"step": 2, "epoch": 0, "loss": 0.4})  # the JSONL log still works
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2

    closed = []
    monkeypatch.setattr(MetricsLog, "close", lambda self: closed.append(self.path))
    train_set, val_set = data
    cfg = small_config(tmp_path, "closed", **{"optim.epochs": 1})

    def crash(step: int) -> None:
        raise Crash

    with pytest.raises(Crash):
        run_training(cfg, make_model(tokenizer, cfg), train_set, val_set, stack_encoded, on_step=crash)
    assert closed == [tmp_path / "closed" / "metrics.jsonl"]
