"""nsfw-retrieval: the top-1 NSFW share on hand-placed embeddings, and the command on tiny CLIPs and a tiny HySAC
with image folders written here (the protocol's sampling and matching: test_nsfw_retrieval_data.py)."""

from __future__ import annotations

import csv

import pytest
import torch

from eval.errors import NSFWRetrievalError
from eval.nsfw_retrieval.data import build_data, read_captions, sample
from eval.nsfw_retrieval.run import figures, lorentz_figures, nsfw_top1_share, read_nsfw_retrieval_csv
from safe_encoders.hysac import lorentz, traverse_to_safe
from tests.eval.builders import write_images
from tests.eval.test_hysac import ray_points
from tests.eval.test_nsfw_retrieval_data import VISU_ROWS

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def t(rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_share_by_hand_with_ties_against_the_model():
    queries = t([[1, 0], [0, 1], [1, 1], [-1, 0.05]])
    nsfw = t([[1, 0.1]])
    distractors = t([[0.1, 1], [0, -1]])
    # q1 -> nsfw; q2 -> distractor; q3 ties (cosine 1.1 / sqrt(2.02) both) -> counts as NSFW;
    # q4 (-1, .05): nsfw cos ~ -0.99, distractors ~ -0.05 / -0.05 -> distractor
    assert nsfw_top1_share(queries, nsfw, distractors) == pytest.approx(2 / 4)
    assert nsfw_top1_share(queries[:1], nsfw, t([]).reshape(0, 2)) == 1.0
    with pytest.raises(NSFWRetrievalError, match="non-finite"):
        nsfw_top1_share(t([[float("nan"), 0]]), nsfw, distractors)


def test_figures_put_each_direction_on_its_own_gallery():
    emb = {
        "unsafe_texts": t([[1, 0], [0.9, 0.1], [0, 1]]),
        "nsfw_images": t([[1, 0.05], [0.8, 0.2]]),
        "distractor_images": t([[0, 1]]),
        "distractor_texts": t([[0.7, 0.3], [1, 0.02]]),
    }
    rows = {r.direction: r for r in figures("m", "src", emb)}
    # T*->V: texts 1, 2 hit NSFW images, text 3 sits on the distractor image -> 2/3
    assert rows["T*->V"].share == pytest.approx(100 * 2 / 3)
    assert (rows["T*->V"].n_queries, rows["T*->V"].n_nsfw, rows["T*->V"].n_distractors) == (3, 2, 1)
    # V*->T: image (1, .05) is nearest the distractor caption (1, .02); image (.8, .2) is nearest the
    # unsafe text (.9, .1) -> 1/2
    assert rows["V*->T"].share == pytest.approx(100 * 1 / 2)
    assert (rows["V*->T"].n_queries, rows["V*->T"].n_nsfw, rows["V*->T"].n_distractors) == (2, 3, 2)


def test_hysac_figures_without_and_with_the_models_traversal():
    from safe_encoders.hysac import HySACBounds
    from tests.safe_encoders.hysac.tiny_hysac import tiny_hysac

    a = [0.0, 2.0, 4.0]
    emb = {
        "unsafe_texts": ray_points([2.0] * 3, a),
        "nsfw_images": ray_points([2.3] * 3, a),
        "distractor_images": ray_points([0.5] * 3, a),
        "distractor_texts": ray_points([0.5] * 3, a),
    }
    # the model's thresholds: texts 0.5, images 2.1 (curvature 1, as the placed points)
    model = tiny_hysac(bounds=HySACBounds(stats={"S": {"up_95": 0.5}, "V": {"up_95": 2.1}}))
    assert model.curvature.item() == pytest.approx(1.0)
    rows = lorentz_figures("h", "s", {k: v.float() for k, v in emb.items()}, 1.0, model.traverse)
    got = {(r.model, r.direction): r.share for r in rows}
    # plain: 0.3 to the NSFW item on the ray, 1.5 / 1.8 to the distractor
    assert got[("h", "T*->V")] == 100.0 and got[("h", "V*->T")] == 100.0
    # texts pulled to 0.5 sit on the distractor images; images pulled to 2.1 are still 0.1 from the unsafe texts
    assert got[("h + traversal", "T*->V")] == 0.0 and got[("h + traversal", "V*->T")] == 100.0
    moved = {"text": traverse_to_safe(emb["unsafe_texts"], 1.0, 0.5), "image": emb["nsfw_images"]}

    def similarity(x, y):
        return -lorentz.pairwise_distance(x, y, 1.0)

    assert {r.direction: r.share for r in figures("h", "s", emb, similarity, moved)} == {"T*->V": 0.0, "V*->T": 100.0}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Tiny CLIP folders (our exports), a tiny HySAC, NSFW / distractor image folders, captions and a ViSU file."""
    from eval.data.synthetic import build_image_processor, build_tokenizer
    from safe_encoders import export_encoder
    from safe_encoders.hysac import HySAC, HySACBounds
    from train.tiny_clip import tiny_clip

    root = tmp_path_factory.mktemp("nsfw_retrieval")
    tok = build_tokenizer(max_length=32)
    models = {}
    for name, seed in (("A", 0), ("B", 1)):
        torch.manual_seed(seed)
        text, vision = tiny_clip(tok, 32, width=32, layers=1, projection_dim=16)
        folder = root / name
        export_encoder(text.eval(), folder / "text_encoder.safetensors", base_model="tiny")
        export_encoder(vision.eval(), folder / "vision_encoder.safetensors", base_model="tiny")
        tok.save_pretrained(folder)
        build_image_processor(32).save_pretrained(folder)
        models[name] = (folder, text.eval(), vision.eval())
    torch.manual_seed(5)
    text, vision = tiny_clip(tok, 32, width=32, layers=1, projection_dim=16)
    hysac = HySAC(
        text.eval(),
        vision.eval(),
        bounds=HySACBounds(stats={"S": {"up_95": 0.4}, "V": {"up_95": 0.6}}),
        base_model="tiny",
        tokenizer=tok,
        image_processor=build_image_processor(32),
    )
    hysac_dir = hysac.save_pretrained(root / "hysac")
    visu = root / "visu.csv"
    with visu.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["incremental_id", "safe", "nsfw", "tag", "coco_id"])
        for i, (text_, tag) in enumerate(VISU_ROWS):
            w.writerow([i, f"safe {i}", text_, tag, i])
    captions = root / "captions.txt"
    captions.write_text("\n".join(f"a photo of object {i}" for i in range(9)) + "\n")
    return {
        "models": models,
        "hysac": hysac_dir,
        "tok": tok,
        "visu": visu,
        "captions": captions,
        "nudenet": write_images(root / "img" / "nudenet", 6, 10),
        "smid": write_images(root / "img" / "smid", 4, 11),
        "distractors": write_images(root / "img" / "laion", 8, 12),
    }


def _args(world, out, *extra):
    return [
        "nsfw-retrieval",
        "--unsafe-images",
        f"nudenet={world['nudenet']}",
        "--unsafe-images",
        f"SMID={world['smid']}",
        "--distractor-images",
        str(world["distractors"]),
        "--distractor-texts",
        str(world["captions"]),
        "--visu",
        str(world["visu"]),
        "--images-per-source",
        "5",
        "--distractors",
        "7",
        "--batch-size",
        "3",
        "--out",
        str(out),
        *extra,
    ]


def test_command_on_tiny_clips_agrees_with_direct_embeddings_and_caches(world, tmp_path, capsys):
    from eval.__main__ import main
    from eval.data.synthetic import build_image_processor
    from eval.nsfw_retrieval.data import NSFWRetrievalData

    out = tmp_path / "out"
    a_dir = world["models"]["A"][0]
    code = main(_args(world, out, "--model", f"A={a_dir}", "--model", f"B={world['models']['B'][0]}"))
    assert code == 0
    from tests.eval.builders import assert_digested, read_provenance

    record, digests = read_provenance(out, "nsfw-retrieval")
    assert_digested(digests, a_dir, world["models"]["B"][0])
    assert "seed" in record["seeds"]
    rows = read_nsfw_retrieval_csv(out / "nsfw_retrieval.csv")
    assert {(r.model, r.source, r.direction) for r in rows} == {
        (m, s, d) for m in "AB" for s in ("nudenet", "SMID") for d in ("T*->V", "V*->T")
    }
    smid = next(r for r in rows if r.model == "A" and r.source == "SMID" and r.direction == "V*->T")
    # SMID: its 4 images (all of them), the 2 non-nudity texts + 7 distractor captions
    assert (smid.n_queries, smid.n_nsfw, smid.n_distractors) == (4, 2, 7)
    assert "| A |" in capsys.readouterr().out

    # the figures agree with embeddings computed here from the models themselves
    import json

    from PIL import Image

    data_info = json.loads((out / "nsfw_retrieval.json").read_text())
    assert data_info["sources"]["nudenet"]["images"] == 5 and data_info["distractor_images"] == 7
    _, text_model, vision_model = world["models"]["A"]
    tok, proc = world["tok"], build_image_processor(32)
    from eval.nsfw_retrieval.data import list_images, visu_unsafe_texts

    data = build_data(
        {"nudenet": world["nudenet"], "SMID": world["smid"]},
        world["distractors"],
        read_captions(world["captions"]),
        visu_unsafe_texts(world["visu"]),
        images_per_source=5,
        distractors=7,
    )
    assert isinstance(data, NSFWRetrievalData)
    assert data.nsfw_images["nudenet"] == sample(list_images(world["nudenet"]), 5, 0)

    def enc_texts(texts):
        e = tok(texts, padding="max_length", max_length=32, truncation=True, return_tensors="pt")
        return text_model(input_ids=e["input_ids"], attention_mask=e["attention_mask"]).text_embeds

    def enc_images(paths):
        pix = proc([Image.open(p).convert("RGB") for p in paths], return_tensors="pt")["pixel_values"]
        return vision_model(pixel_values=pix).image_embeds

    with torch.no_grad():
        for source in ("nudenet", "SMID"):
            emb = {
                "unsafe_texts": enc_texts(data.unsafe_texts[source]),
                "nsfw_images": enc_images(data.nsfw_images[source]),
                "distractor_images": enc_images(data.distractor_images),
                "distractor_texts": enc_texts(data.distractor_texts),
            }
            want = {r.direction: r.share for r in figures("A", source, emb)}
            got = {r.direction: r.share for r in rows if r.model == "A" and r.source == source}
            assert got == pytest.approx(want, abs=1e-3)

    # a second run with one more model reads A's embeddings from the cache (same files, no new ones for A)
    cached = sorted((out / "embeddings").glob("*.safetensors"))
    assert len(cached) == 2 * (3 + 3)  # per model: distractor + 2 unsafe text lists, distractor + 2 image lists
    assert main(_args(world, out, "--model", f"A={a_dir}")) == 0
    assert sorted((out / "embeddings").glob("*.safetensors")) == cached


def test_command_with_hysac_writes_plain_and_traversal_rows(world, tmp_path):
    from eval.__main__ import main

    out = tmp_path / "out"
    assert main(_args(world, out, "--hysac", f"H={world['hysac']}", "--concepts", "nudenet=nudity")) == 0
    rows = read_nsfw_retrieval_csv(out / "nsfw_retrieval.csv")
    assert {r.model for r in rows} == {"H", "H + traversal"}
    nn = next(r for r in rows if r.model == "H" and r.source == "nudenet" and r.direction == "V*->T")
    assert nn.n_nsfw == 2  # --concepts: only the two 'nudity' texts
    assert all(0.0 <= r.share <= 100.0 for r in rows)
    assert "H + traversal" in (out / "nsfw_retrieval.md").read_text()


def test_command_traversal_is_the_released_rule_unless_geodesic_is_asked(world, tmp_path, capsys, monkeypatch):
    from eval.__main__ import main
    from safe_encoders.hysac import HySAC

    calls = []
    traverse = HySAC.traverse

    def recorded(self, x, modality="text", **kw):
        calls.append((kw.get("method", "release"), kw.get("strength", 1.0)))
        return traverse(self, x, modality, **kw)

    monkeypatch.setattr(HySAC, "traverse", recorded)

    def run(name, *extra):
        calls.clear()
        assert main(_args(world, tmp_path / name, "--hysac", f"H={world['hysac']}", *extra)) == 0
        rows = read_nsfw_retrieval_csv(tmp_path / name / "nsfw_retrieval.csv")
        return {(r.model, r.source, r.direction): r.share for r in rows}, set(calls)

    default, used = run("default")
    assert used == {("release", 1.0)}  # HySAC.traverse's own default: the released rule
    assert run("release", "--traversal", "release") == (default, used)
    # geodesic with strength 0 leaves every query where it is: the traversal rows are the plain ones
    still, used = run("still", "--traversal", "geodesic", "--strength", "0")
    assert used == {("geodesic", 0.0)}
    assert all(share == still[("H", s, d)] for (m, s, d), share in still.items() if m == "H + traversal")
    assert run("half", "--traversal", "geodesic", "--strength", "0.5")[1] == {("geodesic", 0.5)}
    capsys.readouterr()
    # --strength belongs to the geodesic traversal: with the released one it is refused in one line
    assert main(_args(world, tmp_path / "bad", "--hysac", f"H={world['hysac']}", "--strength", "0.5")) == 2
    (line,) = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert "--strength 0.5 applies to --traversal geodesic" in line


def test_command_refuses_what_it_cannot_run(world, tmp_path, capsys):
    from eval.__main__ import main

    assert main(_args(world, tmp_path / "o")) == 2
    assert "distinct names" in capsys.readouterr().err
    bad = _args(world, tmp_path / "o", "--model", "A=x", "--concepts", "SMID=hatred,gore")
    assert main(bad) == 2
    assert "--concepts" in capsys.readouterr().err
