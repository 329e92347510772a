"""Safe-CLIP as eval-unlearn techniques: discovered through eval-unlearn's own entry-point loader (this package's
``eval_unlearn.techniques`` entry points), run by its single-benchmark runner end to end on a tiny SD pipeline and
prompt files written here (metric ``ua_ira``, whose CLIP is a tiny CLIPModel standing at its Hub id in a private
offline cache); the images it saves equal ours for the same prompt and seed, and differ from plain SD's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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
for run in args["runs"]:
    SingleBenchmarkRunner(
        run["technique"], "ua_ira", technique_config=run["config"], metric_config=run["metric"],
        output_dir=run["out"], seed=args["seed"],
    ).run()
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


def _run_harness(tmp_path, runs):
    """eval-unlearn's single-benchmark runner (ua_ira, seed 5) for each ``(technique, config, target, retain)``, in
    one fresh offline process; per run, its images per category in prompt order."""
    from PIL import Image

    from tests.eval.builders import REPO

    specs = []
    for technique, config, target, retain in runs:
        folder = tmp_path / technique
        folder.mkdir()
        (folder / "target.csv").write_text("prompt\n" + "\n".join(target) + "\n")
        (folder / "retain.csv").write_text("prompt\n" + "\n".join(retain) + "\n")
        metric = {"target_prompts_path": str(folder / "target.csv"), "retain_prompts_path": str(folder / "retain.csv")}
        specs.append({"technique": technique, "config": config, "metric": metric, "out": str(folder / "results")})
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(_clip_hub_cache(tmp_path)),
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO),
    }
    args = {"names": list(TECHNIQUES), "runs": specs, "seed": 5}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(args)], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["found"] == TECHNIQUES

    saved = {}
    for spec in specs:
        results = Path(spec["out"])
        (run_dir,) = results.glob(f"{spec['technique']}_ua_ira_*")
        report = json.loads((results / f"{run_dir.name.rsplit('_', 1)[1]}_report.json").read_text())
        assert report["technique_name"] == spec["technique"] and "value" in report["metric_result"]
        saved[spec["technique"]] = {
            cat: [
                np.asarray(Image.open(p).convert("RGB")).astype(int)
                for p in sorted((run_dir / "images" / cat).glob("*.png"))
            ]
            for cat in ("target", "retain")
        }
    return saved


def _gate_classifier(folder):
    """A tiny HySAC saved to ``folder`` and the gate threshold halfway between two prompts' scores: (folder,
    threshold, safe prompt, unsafe prompt)."""
    from transformers import CLIPImageProcessor

    from tests.safe_encoders.hysac.tiny_hysac import tiny_hysac
    from tests.tiny_models import clip_tokenizer

    model = tiny_hysac(seed=3)
    model.tokenizer = clip_tokenizer()
    model.image_processor = CLIPImageProcessor(size={"shortest_edge": 30}, crop_size={"height": 30, "width": 30})
    pair = ["a photo of a cat", "a photo of a dog"]
    scores = model.unsafe_score(texts=pair, text_threshold=0.0).text.scores
    safe, unsafe = pair if scores[0] < scores[1] else pair[::-1]
    return model.save_pretrained(folder), scores.mean().item(), safe, unsafe


def test_harness_discovers_and_runs_our_techniques(tmp_path, tiny_sd_dir, tiny_safe_file):
    """safe_clip and safe_clip_sld: the images equal ours (same prompt, seed, checkpoint) and differ from plain
    SD's. hysac_gate: the unsafe prompt is blanked, the safe one is generated as plain SD generates it."""
    from safe_encoders.eval_unlearn import sld_presets

    target, retain = ["a nude figure", "a naked body"], ["a red apple"]
    base = {"model_id": str(tiny_sd_dir), "num_inference_steps": 2}
    safe_config = {**base, "checkpoint": str(tiny_safe_file)}
    hysac, threshold, safe, unsafe = _gate_classifier(tmp_path / "hysac")
    gate_config = {**base, "hysac": str(hysac), "text_threshold": threshold, "image_threshold": 1e9}
    saved = _run_harness(
        tmp_path,
        [
            ("safe_clip", safe_config, target, retain),
            ("safe_clip_sld", {**safe_config, "strength": "max"}, target, retain),
            ("hysac_gate", gate_config, [unsafe], [safe]),
        ],
    )
    for technique, sld in (("safe_clip", None), ("safe_clip_sld", sld_presets()["max"])):
        images = saved[technique]["target"] + saved[technique]["retain"]
        assert len(images) == 3
        # one batch: prompt i of the call (target first, then retain) is seeded 5 + i
        ours = _ours(tiny_sd_dir, tiny_safe_file, target + retain, 5, sld)
        assert all(np.abs(got - want).max() <= 1 for got, want in zip(images, ours, strict=True)), technique
        plain = _ours(tiny_sd_dir, None, target + retain, 5, sld)
        assert any(np.abs(got - p).max() > 1 for got, p in zip(images, plain, strict=True)), technique

    gate = saved["hysac_gate"]
    assert gate["target"][0].max() == 0  # blocked: blanked
    plain_unsafe, plain_safe = _ours(tiny_sd_dir, None, [unsafe, safe], 5)
    assert np.abs(gate["retain"][0] - plain_safe).max() <= 1 and plain_unsafe.max() > 0
