"""What the demo's user sees while it trains: a step line every few seconds with the running epoch and loss, read
from the run's metrics.jsonl; and the libraries' noise silenced (put back after)."""

import json
import warnings

from train.demo_progress import StepLines, last_step_record, quiet_libraries


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _log(path, records) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_a_step_line_every_few_seconds_with_epoch_step_and_loss(tmp_path):
    clock, lines = FakeClock(), []
    hook = StepLines("pre-training", tmp_path, epochs=15, say=lines.append, every=5.0, clock=clock)
    _log(tmp_path / "metrics.jsonl", [{"step": 1, "epoch": 0, "loss": 5.5}, {"step": 2, "epoch": 0, "loss": 4.25}])
    clock.now += 4.9
    hook(2)
    assert lines == []  # not yet 5 s
    clock.now += 0.2
    hook(2)
    assert lines == ["    pre-training: epoch 1/15, step 2, loss 4.250 (5 s)"]
    # an epoch record (validation figures, no loss) after the step records: the last step's loss is shown
    _log(
        tmp_path / "metrics.jsonl",
        [{"step": 40, "epoch": 1, "loss": 2.5}, {"step": 40, "epoch": 1, "val_loss": 9.0}],
    )
    hook(40)
    assert len(lines) == 1  # within 5 s of the last line
    clock.now += 5
    hook(40)
    assert lines[-1] == "    pre-training: epoch 2/15, step 40, loss 2.500 (10 s)"


def test_the_last_record_is_read_from_the_tail_and_a_half_written_line_is_skipped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    assert last_step_record(path) is None  # no log yet
    records = [{"step": i, "epoch": i // 100, "loss": 1.0 / (i + 1), "pad": "x" * 50} for i in range(1000)]
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"step": 1000, "epo')
    assert last_step_record(path, tail_bytes=4096)["step"] == 999


def test_quiet_libraries_silences_bars_and_the_peft_warning_then_puts_them_back():
    from transformers.utils import logging as hf_logging

    assert hf_logging.is_progress_bar_enabled()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with quiet_libraries():
            assert not hf_logging.is_progress_bar_enabled()
            warnings.warn("`is_gradient_checkpointing` is deprecated", FutureWarning, stacklevel=1)
            warnings.warn("another warning", FutureWarning, stacklevel=1)
        assert [str(w.message) for w in caught] == ["another warning"]
    assert hf_logging.is_progress_bar_enabled()
    with quiet_libraries(enabled=False):
        assert hf_logging.is_progress_bar_enabled()
