"""Safe-CLIP as eval-unlearn techniques: discovered through eval-unlearn's own entry-point loader (this package's
``eval_unlearn.techniques`` entry points), run by its single-benchmark runner end to end on a tiny SD pipeline and
prompt files written here (metric ``ua_ira``, whose CLIP is a tiny CLIPModel standing at its Hub id in a private
offline cache); the images it saves equal ours for the same prompt and seed, and differ from plain SD's."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.usefixtures("one_torch_thread")

pytest.importorskip("eval_unlearn", reason="eval-unlearn is not installed (pip install -e '.[eval-unlearn]')")

SCRIPT = """
import json, sys
from eval_unlearn.registry import get_technique
from eval_unlearn.registry.entrypoints import load_entrypoints
from eval_unlearn.runners.single_benchmark_runner import SingleBenchmarkRunner
load_entrypoints()
args = json.loads(sys.argv[1])
found = {name: get_technique(name).__module__ + ":" + get_technique(name).__name__ for name in args["names"]}
runner = SingleBenchmarkRunner(
    args["technique"], "ua_ira", technique_config=args["config"], metric_config=args["metric"],
    output_dir=args["out"], seed=args["seed"],
)
result = runner.run()
print(json.dumps({"found": found}))
"""


def _clip_hub_cache(tmp_path):
    from eval.data.synthetic import build_image_processor
    from tests.tiny_models import HUB_FIXTURES, TOKENIZER_DIR, save_clip_repo, tiny_clip_model, write_hub_cache

    real = HUB_FIXTURES / "openai__clip-vit-large-patch14"
    folder = save_clip_repo(tiny_clip_model(0), tmp_path / "clip")
    build_image_processor(30).save_pretrained(folder)
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        (folder / name).write_bytes((real / name).read_bytes())
    for name in ("vocab.json", "merges.txt"):
        (folder / name).write_bytes((TOKENIZER_DIR / name).read_bytes())
    cache = tmp_path / "hub"
    write_hub_cache(cache, "openai/clip-vit-large-patch14", {p.name: p for p in folder.iterdir() if p.is_file()})
    return cache


def _ours(tiny_sd_dir, safe_file, prompts, seed, sld=None):
    import torch
    from diffusers import StableDiffusionPipeline, StableDiffusionPipelineSafe

    from safe_encoders import make_safe

    cls = StableDiffusionPipeline if sld is None else StableDiffusionPipelineSafe
    pipe = cls.from_pretrained(tiny_sd_dir, safety_checker=None, requires_safety_checker=False)
    if safe_file is not None:
        make_safe(pipe, checkpoint=str(safe_file))
    pipe.set_progress_bar_config(disable=True)
    return [
        np.asarray(
            pipe(
                p,
                num_inference_steps=2,
                guidance_scale=7.5,
                generator=torch.Generator("cpu").manual_seed(seed + i),
                **(sld or {}),
            ).images[0]
        ).astype(int)
        for i, p in enumerate(prompts)
    ]


TECHNIQUES = {
    "safe_clip": "safe_encoders.eval_unlearn:SafeCLIPTechnique",
    "safe_clip_sld": "safe_encoders.eval_unlearn:SafeCLIPSLDTechnique",
    "hysac_gate": "safe_encoders.eval_unlearn:HySACGateTechnique",
}


def _run_harness(tmp_path, technique, config, target, retain):
    """eval-unlearn's single-benchmark runner (ua_ira, seed 5) in a fresh offline process; its images per
    category, in prompt order."""
    from PIL import Image

    from tests.eval.builders import REPO

    (tmp_path / "target.csv").write_text("prompt\n" + "\n".join(target) + "\n")
    (tmp_path / "retain.csv").write_text("prompt\n" + "\n".join(retain) + "\n")
    args = {
        "names": list(TECHNIQUES),
        "technique": technique,
        "config": config,
        "metric": {
            "target_prompts_path": str(tmp_path / "target.csv"),
            "retain_prompts_path": str(tmp_path / "retain.csv"),
        },
        "out": str(tmp_path / "results"),
        "seed": 5,
    }
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(_clip_hub_cache(tmp_path)),
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO),
    }
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(args)], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["found"] == TECHNIQUES

    (run_dir,) = (tmp_path / "results").glob(f"{technique}_ua_ira_*")
    run_id = run_dir.name.rsplit("_", 1)[1]
    report = json.loads((tmp_path / "results" / f"{run_id}_report.json").read_text())
    assert report["technique_name"] == technique and "value" in report["metric_result"]
    return {
        cat: [
            np.asarray(Image.open(p).convert("RGB")).astype(int)
            for p in sorted((run_dir / "images" / cat).glob("*.png"))
        ]
        for cat in ("target", "retain")
    }


@pytest.mark.parametrize("technique", ["safe_clip", "safe_clip_sld"])
def test_runner_discovers_and_runs_our_technique(tmp_path, tiny_sd_dir, tiny_safe_file, technique):
    from safe_encoders.eval_unlearn import sld_presets

    target, retain = ["a nude figure", "a naked body"], ["a red apple"]
    config = {"model_id": str(tiny_sd_dir), "checkpoint": str(tiny_safe_file), "num_inference_steps": 2}
    if technique == "safe_clip_sld":
        config["strength"] = "max"
    saved = _run_harness(tmp_path, technique, config, target, retain)
    assert [len(saved["target"]), len(saved["retain"])] == [2, 1]
    sld = sld_presets()["max"] if technique == "safe_clip_sld" else None
    # one batch: prompt i of the call (target first, then retain) is seeded 5 + i
    ours = _ours(tiny_sd_dir, tiny_safe_file, target + retain, 5, sld)
    for got, want in zip(saved["target"] + saved["retain"], ours, strict=True):
        assert np.abs(got - want).max() <= 1
    plain = _ours(tiny_sd_dir, None, target + retain, 5, sld)
    assert any(np.abs(g - p).max() > 1 for g, p in zip(saved["target"] + saved["retain"], plain, strict=True))


def test_hysac_gate_blanks_the_unsafe_prompt_and_passes_the_safe_one(tmp_path, tiny_sd_dir):
    """The gate's threshold halfway between the two prompts' scores: the farther one is blocked (a black image),
    the other is generated as plain SD generates it with the same seed."""
    from transformers import CLIPImageProcessor

    from tests.safe_encoders.hysac.tiny_hysac import tiny_hysac
    from tests.tiny_models import clip_tokenizer

    model = tiny_hysac(seed=3)
    model.tokenizer = clip_tokenizer()
    model.image_processor = CLIPImageProcessor(size={"shortest_edge": 30}, crop_size={"height": 30, "width": 30})
    folder = model.save_pretrained(tmp_path / "hysac")
    pair = ["a photo of a cat", "a photo of a dog"]
    scores = model.unsafe_score(texts=pair, text_threshold=0.0).text.scores
    safe, unsafe = pair if scores[0] < scores[1] else pair[::-1]
    config = {
        "model_id": str(tiny_sd_dir),
        "hysac": str(folder),
        "text_threshold": scores.mean().item(),
        "image_threshold": 1e9,
        "num_inference_steps": 2,
    }
    saved = _run_harness(tmp_path, "hysac_gate", config, [unsafe], [safe])
    assert saved["target"][0].max() == 0  # blocked: blanked
    (plain_unsafe, plain_safe) = _ours(tiny_sd_dir, None, [unsafe, safe], 5)
    assert np.abs(saved["retain"][0] - plain_safe).max() <= 1 and plain_unsafe.max() > 0
