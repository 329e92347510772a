"""eval vlm-bench end to end through the real lmms-eval: a tiny llava-hf LLaVA (random weights, real transformers
classes, the real LLaVA 1.5 tokenizer and chat template) and tiny local lmms-eval tasks (task YAMLs over JSONL files
written here, lmms-eval's own exact_match metric), with and without a tiny Safe-CLIP tower; killed and resumed.

The table's numbers are checked against exact match recomputed from lmms-eval's sample logs; the plug-in is checked
to differ from the stock model only in the tower, and to be lmms-eval's own llava_hf class (not a copy)."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tomllib
import torch

from eval.__main__ import main
from eval.vlm_bench.run import VLMBenchError
from tests.eval.builders import REPO, save_tiny_llava_and_safe_tower, subprocess_env

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TASK_UTILS = """import os
import time
from pathlib import Path

from PIL import Image


def doc_to_visual(doc):
    started = os.environ.get("TINY_TASK_STARTED")  # a folder: a file named for the task says it has started
    if started:
        Path(started, "{name}").touch()
        time.sleep(0.3)  # lets a test kill a run in the middle of a task
    return [Image.open(doc["image"]).convert("RGB")]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"]
"""


def write_task(folder: Path, name: str, answers: list[str], seed: int = 0) -> Path:
    """An lmms-eval task ``name`` in ``folder``: a YAML over a JSONL of image questions with ``answers``."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i, answer in enumerate(answers):
        image = folder / f"{name}_{i}.png"
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(image)
        rows.append({"id": i, "image": str(image), "question": f"What is in picture {i}?", "answer": answer})
    (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (folder / f"{name}_utils.py").write_text(TASK_UTILS.replace("{name}", name), encoding="utf-8")
    (folder / f"{name}.yaml").write_text(
        f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {folder / f'{name}.jsonl'}\n"
        "test_split: test\noutput_type: generate_until\n"
        f"doc_to_visual: !function {name}_utils.doc_to_visual\ndoc_to_text: !function {name}_utils.doc_to_text\n"
        "doc_to_target: answer\ngeneration_kwargs:\n  max_new_tokens: 6\n  temperature: 0\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n"
        "metadata:\n  - version: 0.0\n",
        encoding="utf-8",
    )
    return folder


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    llava, safe = save_tiny_llava_and_safe_tower(tmp_path_factory.mktemp("vlm_bench"))
    return {"llava": llava, "safe": safe}


def _args(world, out, tasks, include, *extra):
    return [
        "vlm-bench", "--model", str(world["llava"]), "--safe-checkpoint", str(world["safe"]), "--device", "cpu",
        "--tasks", tasks, "--include-path", str(include), "--out", str(out), *extra,
    ]  # fmt: skip


def _samples(out: Path, condition: str, task: str) -> list[dict]:
    """lmms-eval's sample log of one pair (the file its EvaluationTracker wrote)."""
    (path,) = (out / "lmms_eval" / condition / task).rglob(f"*_samples_{task}.jsonl")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _answers(out: Path, condition: str, task: str) -> list[str]:
    return [s["filtered_resps"] for s in sorted(_samples(out, condition, task), key=lambda s: s["doc_id"])]


def _exact_match(samples: list[dict]) -> float:
    return sum(s["filtered_resps"] == s["target"] for s in samples) / len(samples)


def _table(out: Path) -> dict[tuple[str, str], float]:
    with open(out / "vlm_bench.csv", newline="", encoding="utf-8") as fh:
        return {(r["condition"], r["task"]): float(r["value"]) for r in csv.DictReader(fh)}


def _pair_files(out: Path, condition: str, task: str) -> dict[str, int]:
    folder = out / "lmms_eval" / condition / task
    return {p.relative_to(folder).as_posix(): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_table_equals_exact_match_of_lmms_evals_sample_logs_after_kill_and_resume(world, tmp_path):
    # A probe: what each condition answers. The real task's answers are the stock model's, so its exact match is 1
    # and the safe model's is the share of answers its tower leaves unchanged.
    probe = write_task(tmp_path / "probe", "tiny_vqa", ["?"] * 6)
    assert main(_args(world, tmp_path / "probe_out", "tiny_vqa", probe)) == 0
    said = {c: _answers(tmp_path / "probe_out", c, "tiny_vqa") for c in ("llava", "llava+safe")}
    assert said["llava"] != said["llava+safe"]  # the tower changes some answer (else the rows could not differ)
    tasks = tmp_path / "tasks"
    write_task(tasks, "tiny_vqa", said["llava"])  # same images and questions as the probe
    write_task(tasks, "tiny_slow", ["yes", "no", "yes", "no"], seed=1)

    # A run killed (SIGKILL) in the middle of its second pair: the first pair is complete, nothing else is.
    out, started = tmp_path / "out", tmp_path / "started"
    started.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "eval", *_args(world, out, "tiny_vqa,tiny_slow", tasks)],
        cwd=REPO, env={**subprocess_env(), "TINY_TASK_STARTED": str(started)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.time() + 120
    while not (started / "tiny_slow").is_file():
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (out / "vlm_bench.csv").exists() and not (out / "lmms_eval" / "llava" / "tiny_slow").exists()
    first = _pair_files(out, "llava", "tiny_vqa")

    assert main(_args(world, out, "tiny_vqa,tiny_slow", tasks)) == 0
    assert _pair_files(out, "llava", "tiny_vqa") == first  # the finished pair was not run again
    assert not list(out.rglob("*.partial"))  # the killed pair's half-written folder is gone
    assert not list(out.rglob("*.partial"))  # the killed pair's half-written folder is gone

    table = _table(out)
    for task in ("tiny_vqa", "tiny_slow"):
        stock, safe = _exact_match(_samples(out, "llava", task)), _exact_match(_samples(out, "llava+safe", task))
        assert table[("llava", task)] == pytest.approx(stock)
        assert table[("llava+safe", task)] == pytest.approx(safe)
        assert table[("llava+safe - llava", task)] == pytest.approx(safe - stock)
    agree = sum(a == b for a, b in zip(said["llava"], said["llava+safe"], strict=True)) / 6
    assert table[("llava", "tiny_vqa")] == 1.0 and table[("llava+safe", "tiny_vqa")] == pytest.approx(agree)
    assert agree < 1

    # lmms-eval's own files, our records and the provenance are kept.
    assert list((out / "lmms_eval" / "llava+safe" / "tiny_slow").rglob("*_results.json"))
    pair = json.loads((out / "lmms_eval" / "llava+safe" / "tiny_vqa" / "pair.json").read_text())
    assert [r["checkpoint"] for r in pair["swap"].values()] == [str(world["safe"])]
    stock_pair = json.loads((out / "lmms_eval" / "llava" / "tiny_vqa" / "pair.json").read_text())
    assert all(r is None for r in stock_pair["swap"].values()) and "safe=False" in stock_pair["model_args"]
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["command"] == "vlm-bench"
    assert provenance["models"]["safe_checkpoint"][0]["sha256"]
    assert provenance["libraries"]["lmms-eval"] == "0.7.3" and provenance["data"]["include_path"][0]["files"] > 0
    md = (out / "vlm_bench.md").read_text()
    assert "| llava+safe - llava |" in md and "tiny_slow exact_match" in md

    # Resuming with other settings is refused before anything runs.
    assert main([*_args(world, out, "tiny_vqa,tiny_slow", tasks), "--limit", "2"]) == 2


def test_llava_next_runs_through_lmms_eval_with_both_towers(tmp_path):
    llava, safe = save_tiny_llava_and_safe_tower(tmp_path / "next", next_=True)  # LLaVA 1.6 (AnyRes crops)
    tasks = write_task(tmp_path / "tasks", "tiny_vqa", ["yes", "no", "yes"])
    out = tmp_path / "out"
    assert main(_args({"llava": llava, "safe": safe}, out, "tiny_vqa", tasks)) == 0
    table = _table(out)
    for condition in ("llava", "llava+safe"):
        assert table[(condition, "tiny_vqa")] == pytest.approx(_exact_match(_samples(out, condition, "tiny_vqa")))
    pair = json.loads((out / "lmms_eval" / "llava+safe" / "tiny_vqa" / "pair.json").read_text())
    assert [r["checkpoint"] for r in pair["swap"].values()] == [str(safe)]


def _lm(world, **args):
    from lmms_eval.models import get_model

    from safe_encoders.lmms_eval import MODEL_ID, register

    register()
    text = ",".join(f"{k}={v}" for k, v in {"pretrained": world["llava"], "device_map": "cpu", **args}.items())
    return get_model(MODEL_ID).create_from_arg_string(text, {"batch_size": 1, "device": "cpu"})


def test_the_plugin_is_lmms_evals_llava_hf_and_differs_from_the_stock_model_only_in_the_tower(world):
    from lmms_eval.models.chat.llava_hf import LlavaHf

    from safe_encoders import is_safe, load_vision_encoder
    from safe_encoders.lmms_eval.model import SafeLlavaHfChat

    stock, safe = _lm(world, safe="false"), _lm(world, safe_checkpoint=world["safe"])
    assert type(safe) is SafeLlavaHfChat and isinstance(safe, LlavaHf)
    assert SafeLlavaHfChat.generate_until is LlavaHf.generate_until  # lmms-eval's generation, not a copy
    assert is_safe(safe.model) and not is_safe(stock.model)

    tower = "model.vision_tower."
    expected = {tower + k: v for k, v in load_vision_encoder(str(world["safe"])).state_dict().items()}
    ours, theirs = safe.model.state_dict(), stock.model.state_dict()
    assert ours.keys() == theirs.keys()
    in_tower = [k for k in ours if k.startswith(tower)]
    assert in_tower and all(torch.equal(ours[k], expected[k]) for k in in_tower)
    assert not all(torch.equal(theirs[k], expected[k]) for k in in_tower)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours if not k.startswith(tower))


def test_a_stock_run_on_an_already_safe_model_and_a_bad_flag_are_refused(world, tmp_path):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from safe_encoders import make_safe
    from safe_encoders.lmms_eval.model import SafeTowerError

    swapped = make_safe(LlavaForConditionalGeneration.from_pretrained(world["llava"]), checkpoint=str(world["safe"]))
    swapped.save_pretrained(tmp_path / "swapped")
    AutoProcessor.from_pretrained(world["llava"]).save_pretrained(tmp_path / "swapped")
    with pytest.raises(SafeTowerError, match="already carries a Safe-CLIP swap record"):
        _lm({"llava": tmp_path / "swapped"}, safe="false")
    with pytest.raises(SafeTowerError, match="safe='maybe': expected true or false"):
        _lm(world, safe="maybe")


def test_options_are_checked_before_any_model_loads(world, tmp_path, capsys, monkeypatch):
    tasks = write_task(tmp_path / "tasks", "tiny_vqa", ["yes"])
    # The default tasks are lmms-eval's (only the unknown one is named).
    assert main(_args(world, tmp_path / "a", "tiny_vqa,mme,mmmu_val,ai2d,pope,no_such_task", tasks)) == 2
    assert "lmms-eval has no task no_such_task (" in capsys.readouterr().err
    assert main([*_args(world, tmp_path / "b", "tiny_vqa", tasks), "--conditions", "llava,safe"]) == 2
    assert "--conditions: unknown ['safe']" in capsys.readouterr().err
    assert not (tmp_path / "a" / "lmms_eval").exists()
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(_args(world, tmp_path / "c", "tiny_vqa", tasks)) == 2
    assert "vlm-bench runs in one process" in capsys.readouterr().err
    monkeypatch.delenv("WORLD_SIZE")
    with pytest.raises(VLMBenchError, match="cannot hold a comma"):
        from eval.vlm_bench.run import CONDITIONS, VLMBenchConfig, model_args

        model_args(VLMBenchConfig(out=tmp_path, model="a,b"), CONDITIONS["llava"])


def test_the_entry_point_registers_both_classes_in_a_fresh_lmms_eval_registry():
    from importlib.metadata import EntryPoint

    from lmms_eval.models.registry_v2 import ModelRegistryV2

    from safe_encoders.lmms_eval import MODEL_ID
    from safe_encoders.lmms_eval.model import SafeLlavaHf, SafeLlavaHfChat

    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    value = project["entry-points"]["lmms_eval.models"][MODEL_ID]
    registry = ModelRegistryV2()
    registry.register_manifest(EntryPoint(MODEL_ID, value, "lmms_eval.models").load()())
    assert registry.get_model_class(MODEL_ID) is SafeLlavaHfChat
    assert registry.get_model_class(MODEL_ID, force_simple=True) is SafeLlavaHf


def test_metrics_of_lmms_evals_results_and_the_table_of_several_metrics_per_task(tmp_path):
    from eval.vlm_bench.report import write_report
    from eval.vlm_bench.run import task_metrics

    def results(perception, cognition, ai2d):  # the shape of lmms-eval's results["results"] for MME and AI2D
        return {
            "results": {
                "mme": {
                    "alias": "mme", "mme_perception_score,none": perception, "mme_perception_score_stderr,none": "N/A",
                    "mme_cognition_score,none": cognition, "mme_cognition_score_stderr,none": 3.0,
                },
                "ai2d": {
                    "alias": "ai2d", "exact_match,flexible-extract": ai2d, "exact_match_stderr,flexible-extract": 0.1,
                },
            }
        }  # fmt: skip

    stock, safe = task_metrics(results(1510.5, 350.0, 0.5)), task_metrics(results(1480.25, float("nan"), 0.25))
    assert stock == {
        "mme": {"mme_perception_score": 1510.5, "mme_cognition_score": 350.0},
        "ai2d": {"exact_match,flexible-extract": 0.5},
    }
    assert safe["mme"]["mme_cognition_score"] is None  # NaN is never a score
    records = [{"condition": "llava", "metrics": stock}, {"condition": "llava+safe", "metrics": safe}]
    write_report(records, tmp_path)
    with open(tmp_path / "vlm_bench.csv", newline="", encoding="utf-8") as fh:
        rows = {(r["condition"], r["task"], r["metric"]): r["value"] for r in csv.DictReader(fh)}
    assert float(rows[("llava+safe - llava", "mme", "mme_perception_score")]) == -30.25
    assert float(rows[("llava+safe - llava", "ai2d", "exact_match,flexible-extract")]) == -0.25
    assert (
        rows[("llava+safe", "mme", "mme_cognition_score")]
        == rows[("llava+safe - llava", "mme", "mme_cognition_score")]
        == ""
    )
    md = (tmp_path / "vlm_bench.md").read_text()
    assert "| llava | 1510.5000 | 350.0000 | 0.5000 |" in md and "| llava+safe - llava | -30.2500 | - | -0.2500 |" in md
