"""Same config + same seed = the same run: adapters, exported encoders and metrics, bit for bit."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from tests.train.synthetic_builders import save_tiny_base, synthetic_run_overrides
from train.__main__ import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def train_and_export(base, run, export):
    overrides = synthetic_run_overrides(base, run, "data.batch_size=4", "lora.dropout=0.2")
    assert main(["safeclip", *overrides]) == 0
    assert main(["export", "--run", str(run), "--out", str(export)]) == 0


def encoder_file(path):
    with safe_open(str(path), "pt") as handle:
        meta = dict(handle.metadata())
    config = json.loads(meta["safe_encoders.provenance"])["config"]
    config.pop("output_dir")  # the one setting that differs between the two runs
    meta["safe_encoders.provenance"] = config
    return load_file(str(path)), meta


def test_two_runs_of_the_same_config_and_seed_are_bitwise_equal(tokenizer, tmp_path, capsys):
    base = save_tiny_base(tokenizer, tmp_path / "base", width=16)
    torch.manual_seed(12345)  # whatever the caller's RNG state, the run depends on its seed only
    train_and_export(base, tmp_path / "a", tmp_path / "export-a")
    torch.manual_seed(999)
    train_and_export(base, tmp_path / "b", tmp_path / "export-b")
    a, b = (load_file(str(tmp_path / r / "best_adapters.safetensors")) for r in "ab")
    assert a.keys() == b.keys() and a
    for key in a:
        assert torch.equal(a[key], b[key]), key
    for kind in ("text", "vision"):
        (ta, ma), (tb, mb) = (encoder_file(tmp_path / f"export-{r}" / f"{kind}_encoder.safetensors") for r in "ab")
        assert ma == mb
        assert all(torch.equal(ta[k], tb[k]) for k in ta) and ta.keys() == tb.keys()

    def metrics(run):
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(ln).items() if k != "time"} for ln in lines]  # wall time aside

    assert metrics("a") == metrics("b") and len(metrics("a")) >= 2
