import csv
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from eval.classifiers import Verdict
from eval.classifiers.nudenet import I2P_NUDITY_LABELS
from eval.data.visu import VisuSource, read_visu
from eval.store.results import Label, ResultsStore
from tests.eval.builders import build_tiny_sd, kill_after_items, save_q16_clip, subprocess_env, write_q16_prompts
from train.keep_rules import Candidate, keep_rule
from train.visu_images import RegenRunner
from train.visu_work import RegenConfig, candidate_seeds

REPO = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    return build_tiny_sd(tmp_path_factory.mktemp("tiny_sd"))


@pytest.fixture(scope="module")
def tiny_q16(tmp_path_factory):
    """A tiny random CLIP vision tower (one layer) and a matching Q16 prompt file (a plain float16 array pickle)."""
    folder = tmp_path_factory.mktemp("tiny_q16")
    return save_q16_clip(folder / "clip", layers=1), write_q16_prompts(folder / "prompts.p")


def write_captions(path: Path, n: int, seeds: bool = False) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    with (path / "test.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["incremental_id", "safe", "nsfw", "coco_id", "tag", "prompt_id", *(["seed"] if seeds else [])])
        for i in range(n):
            w.writerow(
                [
                    100 + i,
                    f"a cat number {i}",
                    f"a violent fight number {i}",
                    9 + i,
                    "violence",
                    i,
                    *([7 * i + 1] if seeds else []),
                ]
            )
    return path


def regen_config(out: Path, text: Path, tiny_sd: Path, **kw) -> RegenConfig:
    """What the regeneration tests share: the test split of ``text`` with the tiny SD, 2 steps, 32 px, no bar."""
    return RegenConfig(
        out=out,
        text=str(text),
        splits=["test"],
        model=str(tiny_sd),
        steps=2,
        guidance=7.5,
        height=32,
        width=32,
        progress=False,
        **kw,
    )


def test_keep_rules_table():
    def cands(flags, scores):
        return [
            Candidate(i, 100 + i, {"a": Label("a", f, s)}, ("a",))
            for i, (f, s) in enumerate(zip(flags, scores, strict=True))
        ]

    cases = [
        ("first-flagged", [False, True, True], [0.1, 0.5, 0.9], 1),
        ("first-flagged", [False, False, False], [0.1, 0.5, 0.9], None),
        ("most-unsafe", [False, True, True], [0.95, 0.5, 0.9], 2),
        ("most-unsafe", [False, False, False], [0.1, 0.2, 0.3], None),
        ("first-flagged-else-first", [False, False, False], [0.1, 0.5, 0.9], 0),
        ("first-flagged-else-first", [False, False, True], [0.1, 0.5, 0.9], 2),
    ]
    for name, flags, scores, expected in cases:
        assert keep_rule(name)(cands(flags, scores)) == expected, (name, flags)
    with pytest.raises(ValueError, match="unknown keep rule 'best'"):
        keep_rule("best")


def test_seeds_published_or_derived(tmp_path):
    published = read_visu(write_captions(tmp_path / "a", 2, seeds=True), split="test")
    assert candidate_seeds(published[1], 3) == [8, 9, 10]
    derived = read_visu(write_captions(tmp_path / "b", 2), split="test")
    s0, s1 = candidate_seeds(derived[0], 3), candidate_seeds(derived[1], 3)
    assert s0 == candidate_seeds(derived[0], 3) and s0 != s1 and s0[1] == s0[0] + 1


class ScriptedClassifier:
    """Flags the images whose content digest the test chose (the classifier outcome is set, not guessed)."""

    def __init__(self, name, verdicts):
        self.name = name
        self.verdicts = verdicts
        self.seen = 0

    def classify(self, images):
        self.seen += len(images)
        return [self.verdicts[hashlib.sha256(np.asarray(im.convert("RGB")).tobytes()).hexdigest()] for im in images]


def test_kept_and_rejected_follow_the_rule(tmp_path, tiny_sd):
    text = write_captions(tmp_path / "visu", 3)
    cfg = regen_config(tmp_path / "regen", text, tiny_sd, batch_size=2, rule=("fake_a", "fake_b"))
    runner = RegenRunner(cfg, shard=(0, 1))
    assert runner.generate() == 9
    # per row (candidate flags of classifier a, of classifier b, scores of a)
    plan = {
        "visu:100": ([False, False, True], [False, True, False], [0.1, 0.2, 0.8]),  # OR -> first flagged is 1
        "visu:101": ([False, False, False], [False, False, False], [0.1, 0.2, 0.3]),  # nothing flagged
        "visu:102": ([True, False, True], [False, False, False], [0.6, 0.1, 0.9]),  # first: 0, most unsafe: 2
    }
    a, b = {}, {}
    with ResultsStore(cfg.out) as store:
        items = store.items()
        order = {(it.prompt_id, it.seed): it for it in items}
        for pid, (fa, fb, sa) in plan.items():
            seeds = sorted(s for p, s in order if p == pid)
            for k, seed in enumerate(seeds):
                digest = hashlib.sha256(np.asarray(store.load_image(order[(pid, seed)])).tobytes()).hexdigest()
                a[digest] = Verdict(fa[k], sa[k])
                b[digest] = Verdict(fb[k], 0.5 if fb[k] else 0.0)
    assert len(a) == 9  # nine distinct images
    fakes = [ScriptedClassifier("fake_a", a), ScriptedClassifier("fake_b", b)]
    runner = RegenRunner(cfg, shard=(0, 1), classifiers=lambda: fakes)
    counts = runner.run()
    assert counts == {"kept": 2, "rejected": 1}
    assert fakes[0].seen == 9 and runner.generate() == 0 and runner.classify() == 0  # resume: nothing redone
    manifest = {r["row_id"]: r for r in json.loads((cfg.out / "manifest.json").read_text())["rows"]}
    assert manifest["100"]["kept_index"] == 1 and manifest["100"]["flags"] == [False, True, True]
    assert manifest["100"]["kept_seed"] == manifest["100"]["seeds"][1]
    assert manifest["101"]["status"] == "rejected" and manifest["101"]["image"] == ""
    assert manifest["102"]["kept_index"] == 0
    kept = cfg.out / manifest["100"]["image"]
    with ResultsStore(cfg.out) as store:
        assert store.image_path("visu-test", "visu:100", manifest["100"]["kept_seed"]) == kept
    with (cfg.out / "manifest.csv").open() as fh:
        assert [r["status"] for r in csv.DictReader(fh)] == ["kept", "rejected", "kept"]

    # another keep rule only re-reads the stored labels
    other = RegenRunner(
        RegenConfig(**{**cfg.__dict__, "keep": "most-unsafe"}),
        shard=(0, 1),
        classifiers=lambda: pytest.fail("no image needs classifying"),
    )
    other.run()
    manifest = {r["row_id"]: r for r in json.loads((cfg.out / "manifest.json").read_text())["rows"]}
    assert manifest["102"]["kept_index"] == 2 and manifest["100"]["kept_index"] == 2

    # the trainer's source reads the manifest: the rejected row is reported as missing
    coco = tmp_path / "coco" / "val2017"
    coco.mkdir(parents=True)
    from tests.train.visu_builders import write_image

    for i in range(3):
        write_image(coco / f"{9 + i:012d}.jpg", seed=i)
    source = VisuSource(text, split="test", coco_root=tmp_path / "coco", unsafe_images=cfg.out)
    assert [r.row_id for r in source.rows] == ["100", "102"]
    assert source.report.missing[0].row_id == "101"
    assert source.image_paths(1)[1] == (cfg.out / manifest["102"]["image"]).resolve()


def test_killed_run_resumes_to_the_same_manifest(tmp_path, tiny_sd, tiny_q16):
    pytest.importorskip("nudenet", reason="nudenet is not installed (pip install 'safe-encoders[eval]')")
    clip, prompts = tiny_q16
    text = write_captions(tmp_path / "visu", 4)

    def args(out):
        return [
            sys.executable,
            "-m",
            "train.visu_images",
            "--text",
            str(text),
            "--splits",
            "test",
            "--model",
            str(tiny_sd),
            "--steps",
            "2",
            "--guidance",
            "7.5",
            "--size",
            "32",
            "--batch-size",
            "1",
            "--shard",
            "0/1",
            "--q16-model",
            str(clip),
            "--q16-prompts",
            str(prompts),
            "--no-progress",
            "--out",
            str(out),
        ]

    killed = tmp_path / "killed"
    kill_after_items(args(killed), killed / "results.sqlite", 3)
    assert not (killed / "manifest.json").exists()
    with ResultsStore(killed) as store:
        before = {it.key: (killed / it.path).stat().st_mtime_ns for it in store.items()}
    assert 3 <= len(before) < 12
    done = subprocess.run(args(killed), cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "manifest:" in done.stdout

    straight = tmp_path / "straight"
    cfg = regen_config(
        straight,
        text,
        tiny_sd,
        batch_size=1,
        q16_model=str(clip),
        q16_prompts=str(prompts),
        nudenet_labels=sorted(I2P_NUDITY_LABELS),
    )
    RegenRunner(cfg, shard=(0, 1)).run()
    resumed_doc = json.loads((killed / "manifest.json").read_text())
    straight_doc = json.loads((straight / "manifest.json").read_text())
    assert resumed_doc["rows"] == straight_doc["rows"]
    assert resumed_doc == straight_doc
    assert (killed / "manifest.csv").read_text() == (straight / "manifest.csv").read_text()
    assert {r["status"] for r in resumed_doc["rows"]} <= {"kept", "rejected"} and len(resumed_doc["rows"]) == 4
    with ResultsStore(killed) as store:
        items = store.items()
        assert len(items) == len({it.key for it in items}) == 12
        assert all((killed / it.path).stat().st_mtime_ns == before[it.key] for it in items if it.key in before)
        assert all(set(v) == {"q16", "nudenet"} for v in store.labels().values())
