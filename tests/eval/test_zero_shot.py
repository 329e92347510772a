"""eval zero-shot: clip_benchmark's metrics of two tiny CLIPs and a tiny HySAC on a generated colour folder (the
class of each image is its colour, by construction), checked against the metrics computed here from the models'
own embeddings (cosine for the CLIPs, HySAC's Lorentz similarity), with the differences to the baseline."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_torch_thread")

pytest.importorskip("sklearn", reason="scikit-learn is not installed (pip install 'safe-encoders[zero-shot]')")
pytest.importorskip(
    "clip_benchmark.metrics.zeroshot_classification",
    reason="clip_benchmark is not installed (pip install --no-deps clip-benchmark; see scripts/dev.sh)",
)

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 200, 40),
    "blue": (30, 40, 220),
    "yellow": (230, 220, 30),
    "black": (10, 10, 10),
    "white": (245, 245, 245),
}
PER_CLASS = 2
SIZE = 30


def _colour_world(root):
    """Class folders of noisy solid-colour images, and a caption CSV (two captions for the first image)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    folder, images = root / "colours", []
    for name, rgb in COLOURS.items():
        (folder / name).mkdir(parents=True)
        for i in range(PER_CLASS):
            pixels = np.clip(np.array(rgb) + rng.integers(-20, 21, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
            path = folder / name / f"{i}.png"
            Image.fromarray(pixels).save(path)
            images.append((path, name))
    captions = root / "captions.csv"
    rows = [
        (p.relative_to(root).as_posix(), f"a {name} square number {i % PER_CLASS}")
        for i, (p, name) in enumerate(images)
    ]
    rows.insert(1, (rows[0][0], "a small red square"))
    with captions.open("w", newline="") as fh:
        csv.writer(fh).writerows([("image", "caption"), *rows])
    return folder, captions, images, rows


def _save_clip(folder, seed):
    from transformers import CLIPImageProcessor, CLIPProcessor

    from tests.tiny_models import clip_tokenizer, tiny_clip_model

    tiny_clip_model(seed=seed).save_pretrained(folder)
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": SIZE}, crop_size={"height": SIZE, "width": SIZE}),
        tokenizer=clip_tokenizer(),
    )
    processor.save_pretrained(folder)
    return folder


def _save_hysac(folder):
    from eval.data.synthetic import build_image_processor, build_tokenizer
    from safe_encoders.hysac import HySAC
    from train.tiny_clip import tiny_clip

    tokenizer = build_tokenizer(24)
    torch.manual_seed(3)
    text, vision = tiny_clip(tokenizer, SIZE, width=32, layers=1, projection_dim=16)
    model = HySAC(
        text.eval(), vision.eval(), base_model="tiny", tokenizer=tokenizer, image_processor=build_image_processor(SIZE)
    )
    return model.save_pretrained(folder)


def _clip_similarities(folder, texts, paths):
    """Cosine (text x image) of a CLIPModel folder, computed with transformers directly."""
    from PIL import Image
    from transformers import CLIPModel, CLIPProcessor

    model, processor = CLIPModel.from_pretrained(folder).eval(), CLIPProcessor.from_pretrained(folder)
    images = [Image.open(p).convert("RGB") for p in paths]
    inputs = processor(text=texts, images=images, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model(**inputs)
    t = torch.nn.functional.normalize(out.text_embeds, dim=-1)
    i = torch.nn.functional.normalize(out.image_embeds, dim=-1)
    return (t @ i.T).double()


def _hysac_similarities(folder, texts, paths):
    """HySAC's own similarity (minus the geodesic distance), text x image."""
    from PIL import Image

    from safe_encoders.hysac import HySAC, embed_images, embed_texts

    model = HySAC.from_pretrained(folder).eval()
    with torch.no_grad():
        t = embed_texts(model, texts)
        i = embed_images(model, [Image.open(p).convert("RGB") for p in paths])
        return model.similarity(t.double(), i.double())


def _classification(sim, labels):
    """acc1, acc5 and mean per-class recall from class-text x image similarities."""
    order = sim.T.argsort(dim=1, descending=True)  # images x classes
    labels = torch.tensor(labels)
    acc1 = (order[:, 0] == labels).double().mean().item()
    acc5 = (order[:, :5] == labels[:, None]).any(dim=1).double().mean().item()
    recalls = [(order[labels == c, 0] == c).double().mean().item() for c in range(sim.shape[0])]
    return {"acc1": acc1, "acc5": acc5, "mean_per_class_recall": float(np.mean(recalls))}


def _retrieval(sim, text_image, k):
    """Text->image recall@k (per text) and image->text recall@k (per image: any of its texts in the top k)."""
    text_image = torch.tensor(text_image)
    top_images = sim.topk(k, dim=1).indices
    image_r = (top_images == text_image[:, None]).any(dim=1).double().mean().item()
    top_texts = sim.T.topk(k, dim=1).indices
    text_r = np.mean([bool((text_image[top_texts[i]] == i).any()) for i in range(sim.shape[1])])
    return {f"image_retrieval_recall@{k}": image_r, f"text_retrieval_recall@{k}": float(text_r)}


def test_zero_shot_command_equals_the_metrics_of_the_embeddings(tmp_path):
    from eval.__main__ import main
    from tests.eval.builders import assert_digested, read_provenance

    folder, captions, images, rows = _colour_world(tmp_path)
    a, b = _save_clip(tmp_path / "A", 6), _save_clip(tmp_path / "B", 7)
    h = _save_hysac(tmp_path / "H")
    out = tmp_path / "out"
    argv = ["zero-shot", "--model", f"A={a}", "--model", f"B={b}", "--hysac", f"H={h}"]
    argv += ["--folder", f"colours={folder}", "--captions", f"caps={captions}", "--recall-k", "1,3"]
    assert main([*argv, "--batch-size", "5", "--out", str(out)]) == 0

    with (out / "zero_shot.csv").open() as fh:
        got = {(r["model"], r["dataset"]): r for r in csv.DictReader(fh)}
    assert set(got) == {(m, d) for m in "ABH" for d in ("colours", "caps")}

    class_texts = [f"a photo of a {c}." for c in COLOURS]
    paths = [p for p, _ in images]
    labels = [list(COLOURS).index(name) for _, name in images]
    image_paths = list(dict.fromkeys(folder.parent / r[0] for r in rows))
    text_image = [image_paths.index(folder.parent / r[0]) for r in rows]
    expected = {}
    for name, similarities in (("A", _clip_similarities), ("B", _clip_similarities), ("H", _hysac_similarities)):
        source = {"A": a, "B": b, "H": h}[name]
        expected[(name, "colours")] = _classification(similarities(source, class_texts, paths), labels)
        sim = similarities(source, [r[1] for r in rows], image_paths)
        expected[(name, "caps")] = {**_retrieval(sim, text_image, 1), **_retrieval(sim, text_image, 3)}
    for key, metrics in expected.items():
        for metric, value in metrics.items():
            # clip_benchmark averages retrieval hits in float32
            assert float(got[key][metric]) == pytest.approx(value, abs=1e-6), (key, metric)
            delta = value - expected[("A", key[1])][metric]
            assert float(got[key][f"delta_{metric}"]) == pytest.approx(delta, abs=1e-6), (key, metric)
    # the three models do not all agree (else the differences would check nothing)
    assert len({tuple(expected[(m, "colours")].values()) + tuple(expected[(m, "caps")].values()) for m in "ABH"}) > 1

    md = (out / "zero_shot.md").read_text()
    assert "difference to A" in md and "| B | colours |" in md
    assert (out / "zero_shot.tex").read_text().startswith(r"\begin{tabular}")
    record, digests = read_provenance(out, "zero-shot")
    assert_digested(digests, a, b, captions)
    assert record["libraries"]["clip-benchmark"]


def test_a_clip_benchmark_dataset_without_torchvision_is_one_clear_error_before_any_model_loads(tmp_path, capsys):
    """CI's torch build has no matching torchvision: ``--dataset cifar10`` says so (the model is never loaded)."""
    import importlib.util

    from eval.__main__ import main

    if importlib.util.find_spec("torchvision") is not None:
        pytest.skip("torchvision is installed here: clip_benchmark's builder imports")
    code = main(["zero-shot", "--model", "A=/nonexistent", "--dataset", "cifar10", "--out", str(tmp_path / "o")])
    assert code == 2
    assert "torchvision" in capsys.readouterr().err and not (tmp_path / "o").exists()
