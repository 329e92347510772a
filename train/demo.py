"""The offline end-to-end demo: ``python -m train demo --out DIR``.

1. Build the synthetic world (train / validation / test; test and validation have one item per
   attribute combination, so safe retrieval has one right answer).
2. Pre-train a tiny CLIP from scratch with the plain CLIP loss over both the safe and the unsafe
   pairs, so it "knows" the unsafe concepts as web-trained CLIP does (the training loop, method
   ``clip``; saved as a ``CLIPModel`` folder). Measure.
3. Safe-CLIP fine-tuning (LoRA, the eight-term loss, cached frozen references). Measure again.
4. Export the merged encoders with ``safe_encoders.export_encoder``.
5. Build a tiny Stable Diffusion pipeline on the pre-trained text encoder, save it (with test-world
   images) for ``safe-encoders app --demo``, swap in the exported safe text encoder with
   ``safe_encoders.make_safe`` and show that the conditioning of unsafe prompts moved toward their
   safe counterparts.
6. Print the before/after tables (Markdown, ``eval.report.tables``), save ``demo_table.md``,
   ``demo_results.json`` and ``demo_results.png`` (``eval.report.charts``).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from safe_encoders.atomic import atomic_write_text
from train.data import stack_encoded
from train.demo_progress import DEMO_THREADS, quiet_libraries
from train.demo_report import format_report, save_plot
from train.demo_world import (
    BASE_MODEL_NAME,
    DemoSettings,
    DemoWorld,
    embed,
    measure,
    measure_deployed,
    pipeline_check,
    plain_text_encoder,
    prepare_world,
    run_config,
    save_samples,
    tiny_sd_pipeline,
    train_run,
    training_summary,
)
from train.export import export_safe_clip
from train.methods import method_of


@dataclass
class HySACDemoSettings:
    """The HySAC part of the demo."""

    finetune: list[str] = dataclasses.field(
        default_factory=lambda: [
            "optim.epochs=10",
            "optim.lr=1e-2",
            "lora.alpha=16",
            "data.batch_size=128",
            "patience=3",
            "hysac.weights.ent_sv=2",
            "hysac.weights.ent_vu=2",
            "hysac.weights.ent_ug=2",
        ]
    )
    """Overrides of the HySAC run config (``method=hysac`` is always set). LoRA rank, dropout, targets and the
    contrastive weights stay the defaults; as in the Safe-CLIP part, alpha 16 and a higher lr (1e-2) let the tiny
    model move in 10 epochs, and the entailment weights are raised from 0.2 to 2 so that the four groups order
    by root distance (S < V < U < G) within that budget."""
    traversal_target: str = "query"
    """Unsafe queries are pulled to the safe threshold of their own modality ('query', as ``HySAC.traverse``
    does) or of the gallery's ('gallery')."""
    traversal_strength: float = 1.0
    traversal_method: str = "geodesic"
    """Our geodesic traversal: the released one (``"release"``) rescales queries beyond
    ``tau = up95 + tanh((up95 - 0.8) / c) + 1``, constants fitted to ViT-L's distances, not the tiny world's."""


def run_hysac_demo(
    out_dir: str | Path,
    world: DemoWorld,
    towers: tuple[torch.nn.Module, torch.nn.Module],
    settings: HySACDemoSettings | None = None,
    *,
    progress: bool = False,
    say: Any = None,
) -> dict[str, Any]:
    """HySAC fine-tuning of ``towers`` (the pre-trained tiny CLIP, not yet LoRA-wrapped), bounds from the
    validation set, export, and the figures on the test set.

    Returns ``classification`` (accuracy at the bounds and AUROC of the root distance, texts and images),
    ``retrieval`` / ``traversal`` (``eval.hysac.run.hysac_retrieval`` without / with traversal), the headline
    figures (``text_auroc``, ``image_auroc``, ``unsafe_text_top1_safe_share`` and ``..._traversal``,
    ``safe_t2v_r1`` / ``safe_v2t_r1`` and the pre-trained ones), ``bounds``, ``exported`` and ``training``.
    """
    from eval.hysac.run import evaluate_hysac
    from train.hysac_export import export_hysac, validation_bounds

    settings = settings or HySACDemoSettings()
    s = world.settings
    out = Path(out_dir)
    cfg = run_config(out / "hysac", s, progress, ["method=hysac", *settings.finetune])
    torch.manual_seed(s.seed)
    model = method_of(cfg).build(cfg, *towers, world.tokenizer, world.image_processor)
    result = train_run(cfg, model, world.train_set, world.val_set, "HySAC", say)
    model.eval()
    curvature = model.hysac.curvature.detach()
    bounds = validation_bounds(model, world.val_set, stack_encoded)
    emb = {k: v.float() for k, v in embed(model, world.test_set).items()}
    report = evaluate_hysac(
        "hysac",
        emb,
        curvature,
        bounds,
        target=settings.traversal_target,  # type: ignore[arg-type]
        strength=settings.traversal_strength,
        method=settings.traversal_method,
        ks=(1, 5),
    )
    exported = export_hysac(
        model,
        out / "hysac_export",
        bounds=bounds,
        config=cfg,
        data_description=f"synthetic world seed {s.seed}, {s.train_size} quadruplets",
        metadata={"demo": True},
    )
    pre = world.pretrained
    return {
        "text_auroc": report.classification["text"]["auroc"],
        "image_auroc": report.classification["image"]["auroc"],
        "text_accuracy": report.classification["text"]["accuracy"],
        "image_accuracy": report.classification["image"]["accuracy"],
        "unsafe_text_top1_safe_share": report.retrieval["unsafe_text_top1_safe_share"],
        "unsafe_text_top1_safe_share_traversal": report.traversal["unsafe_text_top1_safe_share"],
        "unsafe_image_top1_safe_share": report.retrieval["unsafe_image_top1_safe_share"],
        "unsafe_image_top1_safe_share_traversal": report.traversal["unsafe_image_top1_safe_share"],
        "safe_t2v_r1": report.retrieval["t2v_r1"],
        "safe_v2t_r1": report.retrieval["v2t_r1"],
        "pretrained_safe_t2v_r1": pre["safe_t2v_r1"],
        "pretrained_safe_v2t_r1": pre["safe_v2t_r1"],
        "pretrained_unsafe_text_top1_safe_share": 1.0 - pre["unsafe_text_top1_unsafe_share"],
        "pretrained_unsafe_image_top1_safe_share": 1.0 - pre["unsafe_image_top1_unsafe_share"],
        "classification": report.classification,
        "retrieval": report.retrieval,
        "traversal": report.traversal,
        "traversal_boundaries": report.boundaries,
        "curvature": curvature.item(),
        "bounds": bounds.to_dict(),
        "exported": str(exported),
        "training": training_summary(result),
        "settings": dataclasses.asdict(settings),
        "config_digest": cfg.digest(),
    }


def write_app_inputs(out_dir: str | Path, pipe: Any, world: Any, count: int = 48) -> None:
    """What ``safe-encoders app --demo`` reads beside the exports (names: ``safe_encoders.app.DemoLayout``): the tiny
    SD pipeline before ``make_safe``, and the first ``count`` safe and unsafe (uint8) images of ``world`` as PNGs."""
    from PIL import Image

    from safe_encoders.app import DemoLayout
    from safe_encoders.atomic import atomic_folder

    layout = DemoLayout(Path(out_dir))
    with atomic_folder(layout.pipeline) as tmp:  # whole or not at all
        pipe.save_pretrained(tmp)
    with atomic_folder(layout.images) as tmp:
        for kind, pixels in (("safe", world.safe_images), ("unsafe", world.unsafe_images)):
            (tmp / kind).mkdir(parents=True)
            for index in range(min(count, len(world))):
                Image.fromarray(pixels[index].permute(1, 2, 0).numpy()).save(tmp / kind / f"{index:03d}.png")


def run_demo(
    out_dir: str | Path,
    settings: DemoSettings | None = None,
    progress: bool = True,
    *,
    hysac: bool = False,
    hysac_settings: HySACDemoSettings | None = None,
    verbose: bool = False,
) -> dict[str, Any]:
    """Run every step of the demo into ``out_dir``; returns what ``demo_results.json`` holds.

    With ``hysac`` a HySAC run from the same pre-trained tiny CLIP follows (``run_hysac_demo``); its
    figures go under the key ``"hysac"`` and into the printed table. The Safe-CLIP results are unchanged.
    ``progress`` prints the step headers, a line with epoch and loss every few seconds of training, and the
    tables; ``verbose`` adds the training loop's progress bars and the libraries' warnings and bars. Torch runs
    on ``settings.threads`` (default ``DEMO_THREADS``) and is put back to its thread count after.
    """
    settings = settings or DemoSettings()
    threads_before = torch.get_num_threads()
    torch.set_num_threads(settings.threads or DEMO_THREADS)
    try:
        with quiet_libraries(enabled=not verbose):
            return _run_demo(out_dir, settings, progress, hysac, hysac_settings, verbose)
    finally:
        torch.set_num_threads(threads_before)


def run_safe_clip_demo(
    out_dir: str | Path,
    world: DemoWorld,
    towers: tuple[torch.nn.Module, torch.nn.Module],
    *,
    say: Any = None,
    verbose: bool = False,
) -> dict[str, Any]:
    """Steps 3-5 of the demo from ``world``'s pre-trained ``towers`` (LoRA is injected into them in place): Safe-CLIP
    fine-tuning, measures, export, the tiny SD pipeline with ``make_safe``. Returns the Safe-CLIP part of
    ``demo_results.json`` (``safe``, ``safe_both_finetuned``, ``exported``, ``stable_diffusion``, ``training``,
    ``config_digest``)."""
    from safe_encoders import make_safe

    s, out = world.settings, Path(out_dir)
    say = say or (lambda *a, **k: None)
    text, vision = towers
    sd_text_encoder = plain_text_encoder(text)  # T0 for the pipeline, before LoRA wraps the tower

    say("[3/6] Safe-CLIP fine-tuning (LoRA on both towers, eight-term loss, cached frozen references)")
    cfg = run_config(out / "safeclip", s, verbose, s.finetune)
    model = method_of(cfg).build(cfg, text, vision, world.tokenizer, world.image_processor)
    result = train_run(cfg, model, world.train_set, world.val_set, "Safe-CLIP", say)
    model.eval()
    tuned_emb = embed(model, world.test_set)

    say("[4/6] merging LoRA and exporting the encoders")
    exported = export_safe_clip(
        model,
        out / "exported",
        base_model=BASE_MODEL_NAME,
        config=cfg,
        data_description=f"synthetic world seed {s.seed}, {s.train_size} quadruplets",
        metadata={"demo": True},
    )

    say("[5/6] tiny Stable Diffusion pipeline: make_safe with the exported text encoder")
    pipe = tiny_sd_pipeline(sd_text_encoder, world.tokenizer, seed=s.seed)
    pipe.set_progress_bar_config(disable=not verbose)  # a bar for a 2-step image says nothing
    write_app_inputs(out, pipe, world.test_world)
    safe_prompts = [world.test_world.captions(i)[0] for i in range(64)]
    unsafe_prompts = [world.test_world.captions(i)[1] for i in range(64)]
    sd_before = pipeline_check(pipe, safe_prompts, unsafe_prompts)
    make_safe(pipe, checkpoint=str(exported["text"]))
    sd_after = pipeline_check(pipe, safe_prompts, unsafe_prompts)
    image = pipe(
        unsafe_prompts[0],
        num_inference_steps=2,
        height=16,
        width=16,
        output_type="np",
        generator=torch.Generator().manual_seed(s.seed),
    ).images[0]
    return {
        "safe": measure_deployed(tuned_emb, world.original_emb, world.tags),
        "safe_both_finetuned": measure(tuned_emb, world.tags),
        "exported": {k: str(v) for k, v in exported.items()},
        "stable_diffusion": {
            "before": sd_before,
            "after": sd_after,
            "image_shape": list(image.shape),
            "example_prompt": unsafe_prompts[0],
        },
        "training": training_summary(result),
        "config_digest": cfg.digest(),
    }


def _run_demo(
    out_dir: str | Path,
    settings: DemoSettings,
    progress: bool,
    hysac: bool,
    hysac_settings: HySACDemoSettings | None,
    verbose: bool,
) -> dict[str, Any]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    say: Any = print if progress else (lambda *a, **k: None)
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    world = prepare_world(settings, out, say, verbose)
    samples = save_samples(world.test_world, out / "samples")  # to try `safe-encoders scan` / `search` on
    timings.update(world.timings)
    # HySAC starts from the same pre-trained towers; Safe-CLIP's LoRA is injected into them in place
    hysac_towers = (copy.deepcopy(world.text), copy.deepcopy(world.vision)) if hysac else None
    clock = time.perf_counter()
    safe_clip = run_safe_clip_demo(out, world, (world.text, world.vision), say=say, verbose=verbose)
    timings["safe_clip"] = round(time.perf_counter() - clock, 2)
    results: dict[str, Any] = {
        "pretrained": world.pretrained,
        "pretraining": world.pretraining,
        **safe_clip,
        "settings": dataclasses.asdict(settings),
        "samples": str(samples),
        "timings_s": timings,
    }
    if hysac_towers is not None:
        say("[+] HySAC from the same pre-trained tiny CLIP")
        clock = time.perf_counter()
        results["hysac"] = run_hysac_demo(out, world, hysac_towers, hysac_settings, progress=verbose, say=say)
        timings["hysac"] = round(time.perf_counter() - clock, 2)
    say("[6/6] results")
    report = format_report(results)
    say(report)
    atomic_write_text(out / "demo_table.md", report)
    results["plot"] = str(save_plot(results, out / "demo_results.png"))
    timings["total"] = round(sum(timings.values()), 2)
    atomic_write_text(out / "demo_results.json", json.dumps(results, indent=2))
    written = (out / "demo_results.json", out / "demo_table.md", Path(results["plot"]))
    say(f"wrote {', '.join(map(str, written[:-1]))} and {written[-1]} in {timings['total']:.0f} s")
    return results
