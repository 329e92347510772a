"""``eval attack`` end to end on the tiny SD pipeline: the UnlearnDiffAtk nudity file and a violence set, each
judged by its own rule, the ASR table read back against the stored labels; bad arguments."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from eval.attack.sets import META_KEY
from eval.store.results import ResultsStore
from tests.eval.builders import shared_file

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _args(out: Path, tiny_sd_dir, tiny_clip_dir, tiny_q16_prompts, *extra: str) -> list[str]:
    return [
        *("attack", "--model", str(tiny_sd_dir), "--conditions", "sd", "--steps", "2", "--size", "32"),
        *("--q16-model", str(tiny_clip_dir), "--q16-prompts", str(tiny_q16_prompts)),
        *("--out", str(out), "--no-progress", "--shard", "0/1", *extra),
    ]


def test_attack_sets_end_to_end(tmp_path, tiny_sd_dir, tiny_clip_dir, tiny_q16_prompts, capsys):
    pytest.importorskip("nudenet", reason="nudenet is not installed (pip install 'safe-encoders[eval]')")
    from eval.__main__ import main

    nudity = shared_file("data", "unlearndiffatk_nudity.csv")
    violence = tmp_path / "Violence_ring-a-bell.csv"
    with violence.open("w", newline="") as fh:
        csv.writer(fh).writerows([["sensitive prompt", "evaluation_seed"], ["a fight", 5], ["a riot", 6], ["x", 7]])
    out = tmp_path / "run"
    argv = _args(out, tiny_sd_dir, tiny_clip_dir, tiny_q16_prompts, "--limit", "2")
    argv += ["--attack-set", f"unlearndiffatk-nudity={nudity}", "--attack-set", f"ring-a-bell-violence={violence}"]
    assert main(argv) == 0
    assert "unlearndiffatk-nudity (nudity, nudenet)" in capsys.readouterr().out

    with ResultsStore(out / "attack") as store:
        items = store.items()
        labels = store.labels()
        recorded = {s["name"]: s for s in store.get_meta(META_KEY)}
    assert sorted((it.prompt_id, it.seed) for it in items) == [
        ("ring-a-bell-violence:0", 5),
        ("ring-a-bell-violence:1", 6),
        ("unlearndiffatk-nudity:21", 932309623),
        ("unlearndiffatk-nudity:296", 2868251644),
    ]
    assert {it.extra["guidance"] for it in items if it.prompt_set == "unlearndiffatk-nudity"} == {7.0}
    assert recorded["unlearndiffatk-nudity"]["rule"] == ["nudenet"] and recorded["ring-a-bell-violence"]["rule"] == [
        "q16"
    ]
    expected = {}
    for it in items:
        rule = "nudenet" if it.prompt_set == "unlearndiffatk-nudity" else "q16"
        n, k = expected.get(it.prompt_set, (0, 0))
        expected[it.prompt_set] = (n + 1, k + labels[it.key][rule].flagged)
    with (out / "attack.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    got = {r["attack_set"]: (int(r["n_images"]), int(r["n_flagged"])) for r in rows}
    assert got == expected
    assert [(r["attack"], r["concept"], r["rule"], r["condition"]) for r in rows] == [
        ("UnlearnDiffAtk", "nudity", "nudenet", "sd"),
        ("Ring-A-Bell", "violence", "q16", "sd"),
    ]
    assert all(float(r["asr"]) == pytest.approx(int(r["n_flagged"]) / int(r["n_images"])) for r in rows)
    from tests.eval.builders import assert_digested, read_provenance

    record, digests = read_provenance(out, "attack")
    assert_digested(digests, nudity, violence, tiny_q16_prompts, tiny_clip_dir, tiny_sd_dir)
    assert record["images_per_prompt"] == 1 and record["seeds"] == {"seed_column": None}
    assert record["device"]["device"] == "cpu"

    # The same set name read with another column would mix two sets in one cell: refused.
    again = _args(out, tiny_sd_dir, tiny_clip_dir, tiny_q16_prompts, "--prompt-column", "evaluation_seed")
    assert main([*again, "--attack-set", f"ring-a-bell-violence={violence}"]) == 2
    assert "already holds attack set 'ring-a-bell-violence'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "at least one --attack-set"),
        (["--attack-set", "ring-a-bell=x.csv"], "not a preset"),
        (["--attack-set", "p4d-n={tmp}/missing.csv"], "does not exist"),
        (["--attack-set", "p4d-n={csv}", "--rule", "q16,gpt"], "unknown classifier"),
        (["--attack-set", "p4d-n={csv}", "--attack-set", "p4d-n={csv}"], "must be distinct"),
        (["--attack-set", "p4d-n={csv}", "--conditions", "sd+nope"], "modifiers must be"),
    ],
)
def test_bad_arguments_are_clear_errors(tmp_path, capsys, extra, message):
    from eval.__main__ import main

    prompts = tmp_path / "p.csv"
    prompts.write_text("prompt\na\n")
    argv = ["attack", "--model", "m", "--out", str(tmp_path / "o")]
    assert main(argv + [e.format(tmp=tmp_path, csv=prompts) for e in extra]) == 2
    assert message in capsys.readouterr().err
