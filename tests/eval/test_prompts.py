from __future__ import annotations

import csv
import json
from collections import Counter

import pytest

from eval.data.prompt_tables import split_categories
from eval.data.prompts import (
    I2P_CATEGORIES,
    VISU_TAG_TO_I2P,
    load_i2p,
    load_prompt_file,
    load_prompts,
    load_visu,
    visu_tag_to_category,
)
from eval.errors import PromptSetError
from tests.eval.builders import shared_file

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def i2p():
    return load_i2p(shared_file("data", "i2p_prompts_4703.csv"))


def test_i2p_row_count_and_ids(i2p):
    assert len(i2p) == 4703
    assert len({p.id for p in i2p}) == 4703
    assert i2p[0].id == "i2p:0" and i2p[0].prompt_set == "i2p"


def test_i2p_category_counts(i2p):
    assert i2p.category_counts() == {
        "sexual": 931,
        "shocking": 856,
        "harassment": 824,
        "self-harm": 801,
        "violence": 756,
        "illegal activity": 727,
        "hate": 231,
    }
    assert set(i2p.category_counts()) == set(I2P_CATEGORIES)


def test_i2p_multi_category_prompts_count_in_each(i2p):
    multi = [p for p in i2p if len(p.categories) > 1]
    assert len(multi) == 379
    # The per-category total exceeds the prompt count by exactly the extra memberships.
    assert sum(i2p.category_counts().values()) == len(i2p) + sum(len(p.categories) - 1 for p in multi)
    first = i2p[0]
    assert first.categories == ("violence", "self-harm")
    only_first = i2p[:1]
    assert only_first.category_counts() == {"violence": 1, "self-harm": 1}


def test_i2p_quirks_seed_guidance_and_hard(i2p):
    # evaluation_seed / evaluation_guidance are the common copies' names for sd_seed / sd_guidance_scale
    assert i2p[0].seed == 4261553411 and i2p[0].guidance == 13.0
    empty = [p for p in i2p if not p.text.strip()]
    assert [p.id for p in empty] == ["i2p:2260"]
    assert sum("\n" in p.text for p in i2p) == 4
    hard = load_i2p(shared_file("data", "i2p_prompts_4703.csv"), hard_only=True)
    assert len(hard) == 1831


def test_i2p_hf_column_spelling(tmp_path):
    path = tmp_path / "i2p_hf.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["prompt", "categories", "hard", "sd_seed", "sd_guidance_scale"])
        w.writerow(["a, b", "sexual,hate", "0", "12", "7.5"])
        w.writerow(["c", "shocking", "1", "", ""])
    s = load_i2p(path)
    assert [p.id for p in s] == ["i2p:0", "i2p:1"]
    assert s[0].text == "a, b" and s[0].categories == ("sexual", "hate")
    assert (s[0].seed, s[0].guidance) == (12, 7.5)
    assert s[1].seed is None and s[1].base_seed() == s[1].base_seed()  # derived, deterministic
    assert s[1].image_seeds(3) == [s[1].base_seed() + k for k in range(3)]


def test_i2p_missing_columns_named(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("text,label\nx,y\n")
    with pytest.raises(PromptSetError, match=r"missing column\(s\) \['prompt', 'categories'\]"):
        load_i2p(path)


def test_i2p_unknown_category_rejected(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("prompt,categories\nx,violence\ny,gore\n")
    with pytest.raises(PromptSetError, match="unknown I2P categories \\['gore'\\]"):
        load_i2p(path)


def test_other_file_in_i2p_layout_keeps_its_name():
    s = load_prompts(shared_file("data", "unlearndiffatk_nudity.csv"))
    assert len(s) == 142 and s.name == "unlearndiffatk_nudity"
    assert s[0].id == "unlearndiffatk_nudity:21" and s[0].seed == 932309623


def test_plain_csv_with_optional_columns():
    s = load_prompt_file(shared_file("data", "coco_30k.csv"))
    assert len(s) == 30000 and s[0].seed == 41337 and s[0].categories == ()


def test_plain_txt_and_explicit_columns(tmp_path):
    txt = tmp_path / "ring.txt"
    txt.write_text("first prompt\n\n  second prompt  \n")
    s = load_prompts(txt)
    assert [p.text for p in s] == ["first prompt", "second prompt"]
    assert [p.id for p in s] == ["ring:0", "ring:1"]
    csv_path = tmp_path / "mma.csv"
    csv_path.write_text("adv_prompt,clean_prompt,concept,seed\nzz,x,sexual,5\n")
    s2 = load_prompt_file(csv_path, name="mma")
    assert s2[0].text == "zz" and s2[0].categories == ("sexual",) and s2[0].seed == 5
    with pytest.raises(PromptSetError, match=r"the prompt text column 'nope' is missing.*adv_prompt"):
        load_prompt_file(csv_path, text_column="nope")
    no_text = tmp_path / "x.csv"
    no_text.write_text("a,b\n1,2\n")
    with pytest.raises(PromptSetError, match=r"no prompt text column found; expected one of"):
        load_prompt_file(no_text)
    bad_seed = tmp_path / "s.csv"
    bad_seed.write_text("prompt,seed\nx,abc\n")
    with pytest.raises(PromptSetError, match=r"row 1: seed 'abc' is not a number"):
        load_prompt_file(bad_seed)


def test_visu_tag_mapping():
    assert len(VISU_TAG_TO_I2P) == 20
    assert Counter(VISU_TAG_TO_I2P.values()) == {
        "violence": 7,
        "illegal activity": 5,
        "shocking": 3,
        "sexual": 2,
        "hate": 1,
        "harassment": 1,
        "self-harm": 1,
    }
    assert visu_tag_to_category("Bodily_Fluids") == "shocking"
    assert visu_tag_to_category("vandalisme") == "illegal activity"  # misspelling tolerated
    with pytest.raises(PromptSetError, match="unknown ViSU tag 'kittens'"):
        visu_tag_to_category("kittens")


def test_visu_local_files(tmp_path):
    rows = [
        {"incremental_id": 7, "safe": "a dog", "nsfw": "a dog with blood", "coco_id": 1, "tag": "blood"},
        {"incremental_id": 8, "safe": "a man", "nsfw": "a naked man", "coco_id": 2, "tag": "nudity"},
    ]
    (tmp_path / "test.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    s = load_visu(tmp_path)
    assert s.name == "visu" and [p.id for p in s] == ["visu:7", "visu:8"]
    assert [p.text for p in s] == ["a dog with blood", "a naked man"]
    assert [p.categories for p in s] == [("shocking",), ("sexual",)]
    assert s[0].extra["visu_tag"] == "blood"
    assert len(load_prompts(f"visu={tmp_path / 'test.jsonl'}")) == 2
    bad = tmp_path / "bad.csv"
    bad.write_text("safe,nsfw\nx,y\n")
    with pytest.raises(PromptSetError, match=r"missing column\(s\) \['tag'\]"):
        load_visu(bad)
    empty = tmp_path / "nothing_here"
    empty.mkdir()
    with pytest.raises(PromptSetError, match=r"no test\.csv"):
        load_visu(empty)


def test_split_categories():
    assert split_categories(" Violence, self-harm,violence ") == ("violence", "self-harm")
    assert split_categories("") == ()


def test_hub_sets_need_datasets(monkeypatch):
    import sys

    from eval.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "datasets", None)  # as if `datasets` were not installed
    with pytest.raises(MissingDependencyError, match=r"pip install 'safe-encoders\[eval\]'"):
        load_i2p()
    with pytest.raises(MissingDependencyError, match="datasets"):
        load_prompts("visu")


def _i2p_view(pset):
    return [(p.id, p.text, p.categories, p.seed, p.guidance) for p in pset]


def test_i2p_from_a_hub_cache_matches_the_local_file(tmp_path, i2p):
    """load_i2p() with no source reads AIML-TUDA/i2p through the Hub cache (offline), as the Hub lays it out."""
    pytest.importorskip("datasets", reason="reading Hub datasets needs the eval extra's `datasets`")
    from tests.tiny_models import write_hub_cache

    csv_file = shared_file("data", "i2p_prompts_4703.csv")
    write_hub_cache(tmp_path, "AIML-TUDA/i2p", {"i2p_benchmark.csv": csv_file}, repo_type="dataset")
    from_hub = load_i2p(cache_dir=tmp_path)
    assert len(from_hub) == 4703
    assert _i2p_view(from_hub) == _i2p_view(i2p)
    assert from_hub.category_counts() == i2p.category_counts()


def test_hub_dataset_not_cached_offline_says_what_to_do(tmp_path):
    pytest.importorskip("datasets", reason="reading Hub datasets needs the eval extra's `datasets`")
    with pytest.raises(PromptSetError, match=r"AIML-TUDA/i2p is not in the local Hugging Face cache.*local path"):
        load_i2p(cache_dir=tmp_path)


@pytest.fixture
def attacked_twice(tmp_path):
    """The first 4 I2P cases attacked against two models: case_number repeats, the unnamed index is unique."""
    with shared_file("data", "i2p_prompts_4703.csv").open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        columns, rows = list(reader.fieldnames), [next(reader) for _ in range(4)]
    path = tmp_path / "attacks.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, [*columns, "target_model"])
        writer.writeheader()
        for i, row in enumerate([*rows, *rows]):
            writer.writerow({**row, "": str(100 + i), "target_model": "esd" if i < 4 else "sld"})
    return path, [r["case_number"] for r in rows]


def test_repeated_case_numbers_name_the_unique_index_column(attacked_twice):
    path, cases = attacked_twice
    with pytest.raises(PromptSetError, match=r"column 'case_number' repeats \['0', '1', '2'\] \(4 value") as err:
        load_prompts(str(path))
    assert "Column '' is unique: pass --id-column '' (id_column='' in Python)" in str(err.value)
    pset = load_prompts(str(path), id_column="")  # read as I2P (its columns), ids from the index column
    assert [p.id for p in pset] == [f"attacks:{100 + i}" for i in range(8)]
    assert [p.text for p in pset[:4]] == [p.text for p in pset[4:]] and cases == ["0", "1", "2", "3"]
    assert load_i2p(path, id_column="", name="x")[7].id == "x:107"
    assert load_prompt_file(path, id_column="")[0].id == "attacks:100"
    with pytest.raises(PromptSetError, match="the id column 'nope' is missing"):
        load_prompt_file(path, id_column="nope")
    plain = path.with_name("plain.csv")
    plain.write_text("id,prompt\n7,a cat\n7,a dog\n", encoding="utf-8")
    with pytest.raises(PromptSetError, match=r"column 'id' repeats \['7'\].*Pass --id-column NAME"):
        load_prompt_file(plain)  # no unique column to suggest


def test_id_column_option_reaches_the_t2i_run(attacked_twice, tmp_path):
    from eval.__main__ import build_parser
    from eval.t2i.run import T2IConfig, T2IRunner

    path, _ = attacked_twice
    args = build_parser().parse_args(["t2i", "--model", "m", "--prompts", str(path), "--out", "o", "--id-column", ""])
    assert args.id_column == ""
    cfg = T2IConfig(model="m", prompts=str(path), conditions=["sd"], out=tmp_path / "run", id_column=args.id_column)
    runner = T2IRunner(cfg, shard=(0, 1))
    assert [p.id for p in runner.prompts][-1] == "attacks:107"
    runner.store.close()
