"""A run whose loss or weights turn NaN / infinite stops before anything of that step is saved; an export refuses
non-finite weights and writes nothing; the command line says either in one line with exit status 2."""

import re

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.train.synthetic_builders import encoded_worlds, save_tiny_base, synthetic_run_overrides
from train.checkpoints import list_checkpoints, read_checkpoint, seed_everything
from train.config import load_config
from train.data import stack_encoded
from train.finite import NonFiniteError
from train.loop import run_training
from train.methods import METHODS, ValidationData
from train.tiny_clip import tiny_clip

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tokenizer):
    return encoded_worlds(tokenizer, 16, 8)


def config(root, *settings):
    base = [f"output_dir={root}", "data.batch_size=4", "optim.epochs=2", "progress=false", "tensorboard=false"]
    return load_config(None, [*base, "lora.rank=2", "save_every_steps=1", "keep_checkpoints=5", *settings])


def build(tokenizer, cfg, method="safe-clip"):
    seed_everything(cfg.seed)
    text, vision = tiny_clip(tokenizer, 32, width=16, layers=1, projection_dim=16)
    return METHODS[method].build(cfg, text, vision, tokenizer, None)


def last_line(capsys):
    """The last line on stderr (model loading draws progress bars before it), after checking it is no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def all_finite(tensors):
    return all(torch.isfinite(t).all() for t in tensors.values())


def test_a_learning_rate_that_blows_the_weights_up_stops_the_run_before_it_saves_them(tokenizer, data, tmp_path):
    cfg = config(tmp_path / "run", "optim.lr=1e10")  # finite, so the config takes it; before: exit 0, NaN adapters
    with pytest.raises(NonFiniteError, match=r"diverged at step 2 .*the loss is NaN.*step-00000001, precedes it"):
        run_training(cfg, build(tokenizer, cfg), *data, stack_encoded)
    saved = list_checkpoints(cfg.output_dir)
    assert [p.name for p in saved] == ["step-00000001"]  # step 2 was not saved
    good = read_checkpoint(saved[0])
    assert all_finite(good.adapters) and all_finite(load_file(str(saved[0] / "optimizer.safetensors")))
    assert not (tmp_path / "run" / "best_adapters.safetensors").exists()  # no epoch ended: nothing to export


def test_a_nan_gradient_under_a_finite_loss_stops_the_run_at_that_step(tokenizer, data, tmp_path):
    cfg = config(tmp_path / "run")
    model = build(tokenizer, cfg)
    name, param = next((n, p) for n, p in model.named_parameters() if "lora_B" in n)
    # as the backward of a sqrt at 0 would: the loss is finite, one gradient is not
    param.register_hook(lambda grad: torch.full_like(grad, float("nan")))
    with pytest.raises(NonFiniteError, match=rf"diverged at step 1 .*{re.escape(name)} hold NaN.*no checkpoint"):
        run_training(cfg, model, *data, stack_encoded)
    assert list_checkpoints(cfg.output_dir) == []


@pytest.mark.parametrize("method", sorted(METHODS))
def test_an_export_of_non_finite_weights_is_refused_and_writes_nothing(tokenizer, data, tmp_path, method):
    cfg = config(tmp_path / "run", f"method={method}")
    model = build(tokenizer, cfg, method)
    with torch.no_grad():
        next(p for p in model.parameters() if p.requires_grad).view(-1)[0] = float("inf")
    validation = ValidationData(data[1], stack_encoded, 4)
    with pytest.raises(NonFiniteError, match=r"export refused: the .* NaN or infinite.*nothing was written"):
        METHODS[method].export(model, tmp_path / "out", cfg, validation, None)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", ["inf", "nan", ".inf", "-1"])
def test_the_command_line_refuses_a_bad_learning_rate_in_one_line(tmp_path, capsys, value):
    from train.__main__ import main

    assert main(["safeclip", f"output_dir={tmp_path / 'run'}", f"optim.lr={value}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "optim.lr must be > 0 (a finite number)" in err and "\n" not in err
    assert not (tmp_path / "run").exists()


def test_the_command_line_stops_a_diverging_run_and_refuses_to_export_nan_adapters(tokenizer, tmp_path, capsys):
    from train.__main__ import main

    base = save_tiny_base(tokenizer, tmp_path / "base", width=16)
    capsys.readouterr()
    diverging = synthetic_run_overrides(base, tmp_path / "bad", "data.batch_size=4", "optim.lr=1e10")
    assert main(["safeclip", *diverging]) == 2
    line = last_line(capsys)  # the override that caused it named first
    assert line.startswith("error: override optim.lr=1e10: training diverged at step 2 (epoch 0): the loss is NaN")

    run = tmp_path / "good"
    assert main(["safeclip", *synthetic_run_overrides(base, run, "data.batch_size=8")]) == 0
    adapters = load_file(str(run / "best_adapters.safetensors"))
    first = sorted(adapters)[0]
    adapters[first][0] = float("nan")  # as a run with no guard used to leave them
    save_file(adapters, str(run / "best_adapters.safetensors"))
    capsys.readouterr()
    assert main(["export", "--run", str(run), "--out", str(tmp_path / "out")]) == 2
    line = last_line(capsys)
    assert line.startswith("error: export refused: the merged text encoder") and "NaN or infinite" in line
    assert not (tmp_path / "out").exists()


def test_export_hysac_itself_refuses_non_finite_weights(tokenizer, tmp_path):
    from train.hysac_export import export_hysac

    cfg = config(tmp_path / "run", "method=hysac")
    model = build(tokenizer, cfg, "hysac")
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if "lora_B" in n).view(-1)[0] = float("nan")
    with pytest.raises(NonFiniteError, match="export refused: the merged HySAC model"):
        export_hysac(model, tmp_path / "out", bounds=None)  # no bounds: nothing else looks at the weights
    assert not (tmp_path / "out").exists()
