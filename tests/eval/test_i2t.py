"""eval i2t end to end: a tiny LLaVA (random weights, real transformers classes) describes image folders
under two conditions, is killed and resumed; tiny judges saved to folders are injected by path."""

from __future__ import annotations

import csv
import math
import sqlite3
import sys

import pytest

from eval.i2t.judges import JudgeSpec
from eval.i2t.run import I2TError, judge_specs, parse_conditions, source_images
from tests.eval.builders import kill_after_items, save_tiny_llava_and_safe_tower, write_images
from tests.eval.text_models import save_text_classifier
from tests.tiny_models import HUB_FIXTURES

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("i2t")
    llava, safe = save_tiny_llava_and_safe_tower(root)
    return {
        "llava": llava,
        "safe": safe,
        "tox": save_text_classifier(root / "tox", ["severe_toxic", "toxic"], seed=1, multi_label=True),
        "nsfw": save_text_classifier(root / "nsfw", ["safe", "nsfw"], seed=2),
        "nudenet": write_images(root / "img" / "nudenet", 3, 20),
        "smid": write_images(root / "img" / "smid" / "sub", 2, 21).parent,
    }


def _args(world, out, *extra):
    return [
        "i2t", "--model", str(world["llava"]),
        "--images", f"nudenet={world['nudenet']}", "--images", f"SMID={world['smid']}",
        "--safe-checkpoint", str(world["safe"]), "--max-new-tokens", "5", "--batch-size", "2",
        "--judge", f"toxicity:{world['tox']}", "--judge", f"nsfw:{world['nsfw']}", "--shard", "0/1",
        "--label", "tiny", "--no-progress", "--out", str(out), *extra,
    ]  # fmt: skip


def _texts(out):
    with sqlite3.connect(out / "results.sqlite") as conn:
        return {(c, p): t for c, p, t in conn.execute("SELECT condition, prompt_id, text FROM texts")}


def test_describe_kill_resume_judge_report(world, tmp_path):
    out = tmp_path / "run"
    kill_after_items([sys.executable, "-m", "eval", *_args(world, out)], out / "results.sqlite", items=3)
    partial = _texts(out)
    assert 3 <= len(partial) < 10
    from eval.__main__ import main

    assert main(_args(world, out)) == 0  # the same command resumes
    from tests.eval.builders import assert_digested, read_provenance

    record, digests = read_provenance(out, "i2t")
    assert_digested(digests, world["llava"], world["nsfw"])
    assert record["seeds"] == {"seed": 0}
    texts = _texts(out)
    images = ["nudenet:000.png", "nudenet:001.png", "nudenet:002.png", "SMID:sub/000.png", "SMID:sub/001.png"]
    assert set(texts) == {(c, i) for c in ("llava", "llava+safe") for i in images}
    assert all(texts[k] == v for k, v in partial.items())  # what was made before the kill is kept as is
    assert not any("describe the image" in t or "ASSISTANT" in t for t in texts.values())  # only the answer
    # nothing described twice: one item row per key
    with sqlite3.connect(out / "results.sqlite") as conn:
        assert conn.execute("SELECT COUNT(*) FROM items").fetchone()[0] == 10
        labels = conn.execute("SELECT classifier, COUNT(*) FROM labels GROUP BY classifier").fetchall()
    assert dict(labels) == {"nsfw": 10, "toxicity": 10}

    # the same run without a kill gives the same texts (greedy; independent of batching and resuming)
    fresh = tmp_path / "fresh"
    assert main([*_args(world, fresh)[:-2], "--batch-size", "1", "--out", str(fresh)]) == 0
    assert _texts(fresh) == texts
    # the safe tower was really used: the descriptions of some image differ between the conditions
    assert any(texts[("llava", i)] != texts[("llava+safe", i)] for i in images)

    with (out / "i2t.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    ours = {(r["model"], r["source"], r["metric"]): r for r in rows if r["n"]}
    assert set(ours) == {
        (m, s, metric)
        for m in ("tiny", "tiny + Safe-CLIP")
        for s in ("nudenet", "SMID")
        for metric in ("percent_nsfw", "toxicity")
    }
    assert ours[("tiny", "nudenet", "toxicity")]["n"] == "3" and ours[("tiny", "SMID", "percent_nsfw")]["n"] == "2"
    assert any(r["model"] == "LLaVA 1.5 (7B) + Safe-CLIP (paper)" for r in rows)
    # toxicity is the mean of 100 x sigmoid(toxic logit) over the source's texts
    from transformers import pipeline

    pipe = pipeline("text-classification", model=str(world["tox"]))
    smid_safe = [texts[("llava+safe", i)] for i in images[3:]]
    scores = [
        100 * next(d["score"] for d in r if d["label"] == "toxic")
        for r in pipe(smid_safe, top_k=None, function_to_apply="sigmoid")
    ]
    assert float(ours[("tiny + Safe-CLIP", "SMID", "toxicity")]["value"]) == pytest.approx(sum(scores) / 2, abs=1e-3)
    assert (out / "i2t.md").is_file() and (out / "i2t.tex").is_file()

    # re-judge NSFW with another classifier without regenerating anything
    other = save_text_classifier(tmp_path / "other", ["SFW", "NSFW"], bias=[0.0, math.log(3)])
    code = main(["i2t-judge", "--out", str(out), "--reclassify", "nsfw", "--judge", f"nsfw:{other}"])
    assert code == 0
    assert _texts(out) == texts
    with (out / "i2t.csv").open() as fh:
        nsfw = {(r["model"], r["source"]): r["value"] for r in csv.DictReader(fh) if r["metric"] == "percent_nsfw"}
    assert float(nsfw[("tiny", "SMID")]) == 100.0  # P(NSFW) = 3/4 for every text
    # the toxicity labels were kept, and a judge with another config is refused without --reclassify
    code = main(["i2t-judge", "--out", str(out), "--judge", f"nsfw:{world['nsfw']}"])
    assert code == 0  # nothing left to judge: nsfw labels are all there
    with sqlite3.connect(out / "results.sqlite") as conn:
        conn.execute("DELETE FROM labels WHERE prompt_id='SMID:sub/000.png' AND classifier='nsfw'")
    assert main(["i2t-judge", "--out", str(out), "--judge", f"nsfw:{world['nsfw']}"]) == 2
    assert main(["classify", "--out", str(out)]) == 2  # image classifiers refuse a store of texts


def test_a_judge_that_cannot_be_loaded_stops_the_run_before_any_description(world, tmp_path, capsys):
    from eval.__main__ import main

    out = tmp_path / "run"
    args = _args(world, out)
    at = args.index(f"toxicity:{world['tox']}")
    del args[at - 1 : at + 1]  # the default toxicity judge (unitary/toxic-bert): not in the cache, and offline
    assert main(args) == 2
    (line,) = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert line.startswith("error: judge 'toxicity': model unitary/toxic-bert cannot be loaded")
    assert line.endswith("with --judge toxicity:MODEL")
    assert _texts(out) == {}  # found out before LLaVA described anything


def test_conditions_sources_and_judge_specs(world, tmp_path):
    assert [c.name for c in parse_conditions("llava+safe, llava")] == ["llava+safe", "llava"]
    with pytest.raises(Exception, match="among"):
        parse_conditions("llava+unet")
    images = source_images({"SMID": world["smid"], "nudenet": world["nudenet"]}, limit=1)
    assert [(i.source, i.id) for i in images] == [("SMID", "SMID:sub/000.png"), ("nudenet", "nudenet:000.png")]
    with pytest.raises(I2TError):
        source_images({"a:b": world["smid"]})
    specs = judge_specs(["toxicity", "nsfw"], ["nsfw:my/model", "llm:some/instruct"])
    assert specs == [JudgeSpec("toxicity"), JudgeSpec("nsfw", "my/model"), JudgeSpec("llm", "some/instruct")]


def test_llava_next_describes_through_its_chat_template_with_both_towers(world, tmp_path):
    from eval.i2t.run import I2T_CONDITIONS, I2TConfig, LlavaDescriber
    from eval.placement import Placement
    from eval.store.results import ResultsStore
    from safe_encoders import is_safe
    from tests.safe_encoders.llava.test_models import tiny_llava

    model, processor = tiny_llava(next_=True, seed=0)
    processor.chat_template = (HUB_FIXTURES / "llava-hf__llava-1.5-7b-hf" / "chat_template.jinja").read_text()
    model.save_pretrained(tmp_path / "next", safe_serialization=True)
    processor.save_pretrained(tmp_path / "next")
    cfg = I2TConfig(
        model=str(tmp_path / "next"), images={}, out=tmp_path, safe_checkpoint=str(world["safe"]), max_new_tokens=4
    )
    with ResultsStore(tmp_path / "store") as store:
        describer = LlavaDescriber(cfg, Placement.resolve((0, 1)), store)
        paths = sorted(world["nudenet"].glob("*.png"))[:2]
        plain = describer.for_condition(I2T_CONDITIONS["llava"]).describe(paths)
        assert not is_safe(describer.model)
        safe = describer.for_condition(I2T_CONDITIONS["llava+safe"]).describe(paths)
        assert is_safe(describer.model) and store.meta_keys("safe_swap:")
        assert len(plain) == len(safe) == 2 and plain != safe
