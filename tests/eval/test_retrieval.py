import csv

import pytest
import torch

from eval.data.visu import VisuSource
from eval.retrieval.data import data_from_visu
from eval.retrieval.embeddings import Embedder, EmbeddingCache, load_encoder
from eval.retrieval.encoder_pairs import EncoderPair
from eval.retrieval.run import (
    PAPER_TABLE2,
    RetrievalRow,
    difference_rows,
    read_retrieval_csv,
    reference_rows,
    retrieval_rows,
    run_retrieval,
    to_markdown,
)
from tests.train.visu_builders import build_visu_world

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_hand_computed_case():
    ts = torch.tensor([[1.0, 0], [0, 1], [1, 1]])
    vs = torch.tensor([[1.0, 0], [1, 1], [0, 1]])
    tu = torch.tensor([[-1.0, 0.1], [1, 1], [1, 0]])
    vu = torch.tensor([[-1.0, 0], [0, -1], [-1, -1]])
    rows = retrieval_rows("m", {"text_safe": ts, "image_safe": vs, "text_unsafe": tu, "image_unsafe": vu})
    got = {(r.direction, r.k): r.recall for r in rows}
    # T->V: only query 0 ranks its image first; V->T likewise; T*->V+V*: only query 1 ([1,1] vs its safe
    # image [1,1]); V*->T+T*: every unsafe image is farthest from its safe text. Galleries hold <= 6 items.
    third = 100 / 3
    expected = {"T->V": third, "V->T": third, "T*->V+V*": third, "V*->T+T*": 0.0}
    for direction, r1 in expected.items():
        assert got[(direction, 1)] == pytest.approx(r1)
        assert got[(direction, 10)] == got[(direction, 20)] == 100.0


def test_difference_rows_only_for_the_papers_condition():
    ours = [
        RetrievalRow("Safe-CLIP ViT-L/14", "T->V", 1, 50.0),
        RetrievalRow("CLIP ViT-L/14", "V*->T+T*", 20, 40.0),
        RetrievalRow("DataComp-1B (ViT-L/14)", "V->T", 10, 80.0),  # named as the paper's row
        RetrievalRow("Safe-CLIP ViT-H/14", "T->V", 1, 50.0),  # another backbone: no paper row
    ]
    got = {(r.model, r.direction, r.k): round(r.recall, 6) for r in difference_rows(ours, "test")}
    assert got == {
        ("ours - paper: Safe-CLIP ViT-L/14", "T->V", 1): round(50.0 - 45.9, 6),
        ("ours - paper: CLIP ViT-L/14", "V*->T+T*", 20): round(40.0 - 40.6, 6),
        ("ours - paper: DataComp-1B (ViT-L/14)", "V->T", 10): round(80.0 - 81.3, 6),
    }
    assert difference_rows(ours, "validation") == []  # Table 2 is the test split
    md = to_markdown([*ours, *reference_rows(), *difference_rows(ours, "test")])
    assert "| ours - paper: Safe-CLIP ViT-L/14 | +4.1 |" in md
    assert "| paper: w/o inappropriate-content redirection | 49.9 | 83.7 | 90.3 |" in md


@pytest.fixture
def world(tmp_path):
    """Two tiny models sharing the vision tower (our export files) and a ViSU-shaped test split."""
    from eval.data.synthetic import build_image_processor, build_tokenizer
    from safe_encoders import export_encoder
    from train.tiny_clip import tiny_clip

    torch.set_num_threads(1)
    tok = build_tokenizer(max_length=32)
    torch.manual_seed(0)
    text_a, vision = tiny_clip(tok, 32, width=32, layers=1, projection_dim=16)
    torch.manual_seed(1)
    text_b, _ = tiny_clip(tok, 32, width=32, layers=1, projection_dim=16)
    a = tmp_path / "model_a"
    export_encoder(text_a.eval(), a / "text_encoder.safetensors", base_model="tiny")
    export_encoder(vision.eval(), a / "vision_encoder.safetensors", base_model="tiny")
    tok.save_pretrained(a)
    build_image_processor(32).save_pretrained(a)
    b = tmp_path / "model_b"
    export_encoder(text_b.eval(), b / "text_encoder.safetensors", base_model="tiny")
    paths = build_visu_world(tmp_path / "visu", split="test")
    source = VisuSource(paths["text"], split="test", coco_root=paths["coco"], unsafe_images=paths["regen"])
    return {
        "a": a,
        "b": b,
        "paths": paths,
        "data": data_from_visu(source),
        "tok": tok,
        "models": (text_a, text_b, vision),
    }


def test_table_cache_and_agreement(tmp_path, world):
    a, b, data = world["a"], world["b"], world["data"]
    pairs = [EncoderPair("A", str(a), str(a)), EncoderPair("B", str(b / "text_encoder.safetensors"), str(a), str(a))]
    forwards = []

    def counting_loader(source, kind, device):
        model = load_encoder(source, kind, device)
        model.register_forward_hook(lambda *_: forwards.append(kind))
        return model

    cache = EmbeddingCache(tmp_path / "cache")
    first = Embedder(cache, batch_size=2, loader=counting_loader)
    rows = run_retrieval(pairs, data, tmp_path / "out1", embedder=first)
    # B shares A's vision tower: its images were encoded once, for A
    assert first.encoded == [("A", "text"), ("A", "vision"), ("B", "text")]
    n_batches = -(-len(data) // 2)
    assert forwards.count("vision") == 2 * n_batches and forwards.count("text") == 2 * 2 * n_batches
    forwards.clear()
    second = Embedder(cache, batch_size=2, loader=counting_loader)
    again = run_retrieval(pairs, data, tmp_path / "out2", embedder=second)
    assert second.encoded == [] and forwards == []  # measured: no encoder ran on the second run
    assert again == rows

    # the table agrees with the metrics of embeddings computed here directly from the models
    from eval.data.synthetic import build_image_processor
    from eval.metrics import safe_clip_retrieval

    text_a, text_b, vision = world["models"]
    tok, proc = world["tok"], build_image_processor(32)

    def images(paths):
        from PIL import Image

        return proc([Image.open(p).convert("RGB") for p in paths], return_tensors="pt")["pixel_values"]

    with torch.no_grad():
        enc = [
            tok(t, padding="max_length", max_length=32, truncation=True, return_tensors="pt")
            for t in (data.safe_texts, data.unsafe_texts)
        ]
        vs, vu = (
            vision(pixel_values=images(data.safe_images)).image_embeds,
            vision(pixel_values=images(data.unsafe_images)).image_embeds,
        )
        for name, text in (("A", text_a), ("B", text_b)):
            ts, tu = (text(**{k: e[k] for k in ("input_ids", "attention_mask")}).text_embeds for e in enc)
            m = safe_clip_retrieval(ts, vs, tu, vu)
            got = {(r.direction, r.k): r.recall for r in rows if r.model == name}
            assert got[("T->V", 1)] == pytest.approx(100 * m["t2v_r1"])
            assert got[("V*->T+T*", 10)] == pytest.approx(100 * m["uv2t_r10"])
            assert got[("T*->V+V*", 1)] == pytest.approx(100 * m["ut2v_r1"])

    with (tmp_path / "out1" / "retrieval.csv").open() as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames) == ("model", "direction", "k", "recall")
        lines = list(reader)
    assert {r["direction"] for r in lines} == {"T->V", "V->T", "T*->V+V*", "V*->T+T*"}
    assert {r["model"] for r in lines} == {"A", "B", *PAPER_TABLE2}
    paper = {(r.model, r.direction, r.k): r.recall for r in read_retrieval_csv(tmp_path / "out1" / "retrieval.csv")}
    assert paper[("paper: Safe-CLIP (ViT-L/14)", "V*->T+T*", 1)] == 19.1
    assert paper[("paper: CLIP (ViT-L/14)", "T->V", 20)] == 81.5
    assert paper[("paper: w/o negative cosine similarities", "T*->V+V*", 10)] == 46.0
    assert len(PAPER_TABLE2) == 5 and len([m for m, _, _ in paper if m.startswith("paper: ")]) == 60
    assert not any(m.startswith("ours - paper") for m, _, _ in paper)  # A and B ran no condition of the paper
    md = (tmp_path / "out1" / "retrieval.md").read_text()
    assert "| A |" in md and "T*->V+V* R@1" in md


def test_cli(tmp_path, world, capsys):
    from eval.__main__ import main

    paths = world["paths"]
    out = tmp_path / "cli"
    code = main(
        [
            "retrieval",
            "--model",
            f"A={world['a']}",
            "--visu",
            str(paths["text"]),
            "--coco-root",
            str(paths["coco"]),
            "--unsafe-images",
            str(paths["regen"]),
            "--out",
            str(out),
            "--no-reference",
        ]
    )
    assert code == 0
    rows = read_retrieval_csv(out / "retrieval.csv")
    assert len(rows) == 12 and {r.model for r in rows} == {"A"}
    assert (out / "visu-test-report.json").is_file() and list((out / "embeddings").glob("*.safetensors"))
    assert "| A |" in capsys.readouterr().out


def test_a_folder_saved_by_clip_processor_is_read_as_it_is(tmp_path, world):
    """transformers 5's CLIPProcessor.save_pretrained writes processor_config.json (no preprocessor_config.json):
    its image processor is found there, no --processor needed, and the table is that of the same processor."""
    import shutil

    from transformers import CLIPProcessor

    from eval.__main__ import main
    from eval.data.synthetic import build_image_processor

    folder = tmp_path / "model_c"
    folder.mkdir()
    for name in ("text_encoder.safetensors", "vision_encoder.safetensors"):
        shutil.copy(world["a"] / name, folder / name)
    CLIPProcessor(image_processor=build_image_processor(32), tokenizer=world["tok"]).save_pretrained(folder)
    assert (folder / "processor_config.json").is_file() and not (folder / "preprocessor_config.json").exists()
    paths = world["paths"]
    data = ["--visu", str(paths["text"]), "--coco-root", str(paths["coco"]), "--unsafe-images", str(paths["regen"])]
    assert main(["retrieval", "--model", f"M={folder}", *data, "--out", str(tmp_path / "c"), "--no-reference"]) == 0
    assert main(["retrieval", "--model", f"M={world['a']}", *data, "--out", str(tmp_path / "a"), "--no-reference"]) == 0
    assert (tmp_path / "c" / "retrieval.csv").read_bytes() == (tmp_path / "a" / "retrieval.csv").read_bytes()
    from tests.eval.builders import assert_digested, read_provenance

    record, digests = read_provenance(tmp_path / "c", "retrieval")
    assert_digested(digests, folder)
    assert record["models"]["model"][0]["value"] == f"M={folder}"
    assert record["data"]["visu"][0]["files"] == sum(1 for p in paths["text"].rglob("*") if p.is_file())


def test_backbone_table_through_the_hub_cache_as_a_user_runs_it(tmp_path, world):
    """`python -m eval retrieval --backbones ViT-L/14` in a real process with HF_HUB_OFFLINE=1 and HF_HUB_CACHE.

    Tiny CLIPModels stand at the Hub ids of the original CLIP and of Safe-CLIP (with the real CLIP
    tokenizer files); the CLIP row must equal a run on the same weights from a local folder.
    """
    import os
    import subprocess
    import sys
    from pathlib import Path

    from eval.data.synthetic import build_image_processor
    from tests.tiny_models import HUB_FIXTURES, TOKENIZER_DIR, save_clip_repo, tiny_clip_model, write_hub_cache

    real = HUB_FIXTURES / "openai__clip-vit-large-patch14"
    cache = tmp_path / "hub"
    folders = {}
    for seed, repo in ((0, "openai/clip-vit-large-patch14"), (1, "aimagelab/safeclip_vit-l_14")):
        folder = save_clip_repo(tiny_clip_model(seed), tmp_path / repo.replace("/", "__"))
        build_image_processor(30).save_pretrained(folder)  # the tiny towers see 30 px images
        for name in ("tokenizer_config.json", "special_tokens_map.json"):
            (folder / name).write_bytes((real / name).read_bytes())
        for name in ("vocab.json", "merges.txt"):  # the CLIP BPE files, as in every CLIP repo
            (folder / name).write_bytes((TOKENIZER_DIR / name).read_bytes())
        files = {p.name: p for p in folder.iterdir() if p.is_file()}
        write_hub_cache(cache, repo, files)
        folders[repo] = folder
    paths = world["paths"]
    out = tmp_path / "out"
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(cache),
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    args = ["--visu", str(paths["text"]), "--coco-root", str(paths["coco"]), "--unsafe-images", str(paths["regen"])]
    cmd = [sys.executable, "-m", "eval", "retrieval", "--backbones", "ViT-L/14", *args, "--out", str(out)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    rows = read_retrieval_csv(out / "retrieval.csv")
    table = {(r.model, r.direction, r.k): r.recall for r in rows}
    diffs = {"ours - paper: CLIP ViT-L/14", "ours - paper: Safe-CLIP ViT-L/14"}
    assert {r.model for r in rows} == {"CLIP ViT-L/14", "Safe-CLIP ViT-L/14", *PAPER_TABLE2, *diffs}
    assert table[("ours - paper: Safe-CLIP ViT-L/14", "V*->T+T*", 1)] == pytest.approx(
        table[("Safe-CLIP ViT-L/14", "V*->T+T*", 1)] - 19.1, abs=1e-3
    )

    local = folders["openai/clip-vit-large-patch14"]
    direct = run_retrieval(
        [EncoderPair("local", str(local), str(local))], world["data"], tmp_path / "direct", reference=False
    )
    via_hub = {(d, k): v for (m, d, k), v in table.items() if m == "CLIP ViT-L/14"}
    assert {(r.direction, r.k): r.recall for r in direct} == pytest.approx(via_hub, abs=1e-3)  # CSV keeps 4 decimals
    safe = [v for (m, _, _), v in sorted(table.items()) if m == "Safe-CLIP ViT-L/14"]
    clip = [v for (m, _, _), v in sorted(table.items()) if m == "CLIP ViT-L/14"]
    assert safe != clip  # the Safe-CLIP row was computed from its own (different) weights


def test_cli_without_models_or_with_an_unknown_backbone_says_what_to_pass(tmp_path, capsys):
    from eval.__main__ import main

    base = ["retrieval", "--coco-root", str(tmp_path), "--unsafe-images", str(tmp_path), "--out", str(tmp_path)]
    assert main(base) == 2
    assert "pass --model NAME=SOURCE (repeatable) and / or --backbones all" in capsys.readouterr().err
    assert main([*base, "--backbones", "ViT-L/14,RN50"]) == 2
    assert "unknown backbone 'RN50'" in capsys.readouterr().err


def test_head_keeps_the_first_quadruplets_aligned(world):
    data = world["data"]
    two = data.head(2)
    assert len(two) == 2 and two.split == data.split
    assert (two.safe_texts, two.unsafe_images) == (data.safe_texts[:2], data.unsafe_images[:2])
    assert two.key("vision") != data.key("vision")  # a shorter run never reuses the full run's embeddings
