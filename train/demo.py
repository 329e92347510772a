"""The offline end-to-end demo: ``python -m train demo --out DIR``.

1. Build the synthetic world (train / validation / test; test and validation have one item per
   attribute combination, so safe retrieval has one right answer).
2. Pre-train a tiny CLIP from scratch with the plain CLIP loss over both the safe and the unsafe
   pairs, so it "knows" the unsafe concepts as web-trained CLIP does. Measure.
3. Safe-CLIP fine-tuning (LoRA, the eight-term loss, cached frozen references). Measure again.
4. Export the merged encoders with ``safe_encoders.export_encoder``.
5. Build a tiny Stable Diffusion pipeline on the pre-trained text encoder, swap in the exported
   safe text encoder with ``safe_encoders.make_safe`` and show that the conditioning of unsafe
   prompts moved toward their safe counterparts.
6. Print a before/after table, save ``demo_results.json`` and ``demo_results.png``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from eval.metrics import safe_clip_retrieval, top1_in_set_share
from eval.synthetic import CONCEPTS, SyntheticWorld, build_image_processor, build_tokenizer
from train.config import TrainConfig, load_config
from train.data import EncodedQuadruplets, QuadrupletCollator, stack_encoded
from train.export import export_safe_clip
from train.loop import train_safe_clip
from train.losses import info_nce
from train.model import SafeClipModel
from train.tiny_clip import tiny_clip

RESULT_KEYS = ("safe_t2v_r1", "safe_v2t_r1", "unsafe_text_top1_unsafe_share", "unsafe_image_top1_unsafe_share")
BASE_MODEL_NAME = "safe-encoders/tiny-clip-synthetic"


@dataclass
class DemoSettings:
    """Sizes and schedules of the demo; the defaults run in a few minutes on 2 CPU cores."""

    seed: int = 0
    train_size: int = 2500
    val_size: int = 200
    test_size: int = 300
    image_size: int = 32
    max_length: int = 24
    width: int = 64
    layers: int = 2
    heads: int = 4
    pretrain_epochs: int = 15
    pretrain_lr: float = 2e-3
    pretrain_batch_size: int = 128
    finetune: list[str] = dataclasses.field(
        default_factory=lambda: [
            "optim.epochs=10",
            "optim.lr=3e-3",
            "lora.alpha=16",
            "data.batch_size=128",
            "patience=3",
        ]
    )
    """Overrides of the Safe-CLIP run config. Rank, dropout, targets and the eight loss weights stay the
    paper's; alpha 16 (LoRA scaling 1 instead of 1/16) and lr 3e-3 let a tiny model move in 10 epochs."""
    threads: int | None = None


# ---------------------------------------------------------------------------- steps


def pretrain_clip(
    text: torch.nn.Module,
    vision: torch.nn.Module,
    data: EncodedQuadruplets,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    log: Any = None,
) -> list[float]:
    """Plain CLIP training (learned temperature) on the safe *and* the unsafe pairs of ``data``."""
    g = torch.Generator().manual_seed(seed)
    log_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    params = [*text.parameters(), *vision.parameters(), log_scale]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    n = len(data)
    steps = epochs * math.ceil(n / batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps, pct_start=0.1)
    t = data.tensors
    text.train()
    vision.train()
    losses: list[float] = []
    for epoch in range(epochs):
        order = torch.randperm(n, generator=g)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            ids = torch.cat([t["safe_input_ids"][idx], t["unsafe_input_ids"][idx]])
            mask = torch.cat([t["safe_attention_mask"][idx], t["unsafe_attention_mask"][idx]])
            pixels = torch.cat([t["safe_pixel_values"][idx], t["unsafe_pixel_values"][idx]])
            loss = info_nce(
                text(input_ids=ids, attention_mask=mask).text_embeds,
                vision(pixel_values=pixels).image_embeds,
                log_scale.exp().clamp(max=100.0),
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        losses.append(loss.item())
        if log is not None:
            log(f"  pre-training epoch {epoch + 1}/{epochs}: loss {loss.item():.3f}")
    text.eval()
    vision.eval()
    return losses


@torch.no_grad()
def embed(encode_text: Any, encode_image: Any, data: EncodedQuadruplets) -> dict[str, torch.Tensor]:
    t = data.tensors
    return {
        "text_safe": encode_text(t["safe_input_ids"], t["safe_attention_mask"]),
        "text_unsafe": encode_text(t["unsafe_input_ids"], t["unsafe_attention_mask"]),
        "image_safe": encode_image(t["safe_pixel_values"]),
        "image_unsafe": encode_image(t["unsafe_pixel_values"]),
    }


def measure(emb: dict[str, torch.Tensor], tags: list[str]) -> dict[str, Any]:
    """The demo's figures: safe R@1 both ways, unsafe shares at top-1, overall and per concept."""
    r = safe_clip_retrieval(emb["text_safe"], emb["image_safe"], emb["text_unsafe"], emb["image_unsafe"], ks=(1, 5))
    out: dict[str, Any] = {
        "safe_t2v_r1": r["t2v_r1"],
        "safe_v2t_r1": r["v2t_r1"],
        "unsafe_t2v_r1": r["ut2v_r1"],
        "unsafe_v2t_r1": r["uv2t_r1"],
        "unsafe_text_top1_unsafe_share": r["unsafe_text_top1_unsafe_share"],
        "unsafe_image_top1_unsafe_share": r["unsafe_image_top1_unsafe_share"],
    }
    n = len(tags)
    unsafe = torch.cat([torch.zeros(n, dtype=torch.bool), torch.ones(n, dtype=torch.bool)])
    norm = torch.nn.functional.normalize
    text_q = norm(emb["text_unsafe"], dim=-1) @ norm(torch.cat([emb["image_safe"], emb["image_unsafe"]]), dim=-1).T
    image_q = norm(emb["image_unsafe"], dim=-1) @ norm(torch.cat([emb["text_safe"], emb["text_unsafe"]]), dim=-1).T
    per: dict[str, dict[str, float]] = {}
    for concept in CONCEPTS:
        rows = torch.tensor([i for i, t in enumerate(tags) if t == concept], dtype=torch.long)
        if rows.numel():
            per[concept] = {
                "unsafe_text_top1_unsafe_share": top1_in_set_share(text_q[rows], unsafe),
                "unsafe_image_top1_unsafe_share": top1_in_set_share(image_q[rows], unsafe),
                "queries": int(rows.numel()),
            }
    out["per_concept"] = per
    return out


def measure_deployed(
    tuned: dict[str, torch.Tensor], original: dict[str, torch.Tensor], tags: list[str]
) -> dict[str, Any]:
    """The figures as Safe-CLIP is deployed: each fine-tuned encoder against the *original* other tower.

    Stable Diffusion keeps the UNet trained on T0 and LLaVA the LLM trained on V0, so a fine-tuned
    text query is matched against images embedded by V0, and a fine-tuned image query against
    texts embedded by T0. (With both towers fine-tuned, V(v*) is redirected next to V(v), so an
    unsafe text query finds safe and unsafe images about equally close by construction.)
    """
    text_side = measure({**original, "text_safe": tuned["text_safe"], "text_unsafe": tuned["text_unsafe"]}, tags)
    image_side = measure({**original, "image_safe": tuned["image_safe"], "image_unsafe": tuned["image_unsafe"]}, tags)
    out = {key: text_side[key] for key in ("safe_t2v_r1", "unsafe_t2v_r1", "unsafe_text_top1_unsafe_share")}
    out.update({key: image_side[key] for key in ("safe_v2t_r1", "unsafe_v2t_r1", "unsafe_image_top1_unsafe_share")})
    out["per_concept"] = {
        concept: {
            "unsafe_text_top1_unsafe_share": text_side["per_concept"][concept]["unsafe_text_top1_unsafe_share"],
            "unsafe_image_top1_unsafe_share": image_side["per_concept"][concept]["unsafe_image_top1_unsafe_share"],
            "queries": text_side["per_concept"][concept]["queries"],
        }
        for concept in text_side["per_concept"]
    }
    return out


def _plain_text_encoder(tower: torch.nn.Module) -> torch.nn.Module:
    """A ``CLIPTextModel`` (what a Stable Diffusion pipeline holds) with the weights of a projection tower."""
    from transformers import CLIPTextModel

    encoder = CLIPTextModel(tower.config)
    inner = {k.removeprefix("text_model."): v for k, v in tower.state_dict().items() if k.startswith("text_model.")}
    target = set(encoder.state_dict())
    if not set(inner) >= target:  # older transformers keep the "text_model." prefix
        inner = {k: v for k, v in tower.state_dict().items() if k in target}
    encoder.load_state_dict(inner)
    return encoder.eval()


def tiny_sd_pipeline(text_encoder: torch.nn.Module, tokenizer: Any, seed: int = 0) -> Any:
    """A randomly initialised, very small Stable Diffusion pipeline conditioned by ``text_encoder``."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    torch.manual_seed(seed)
    width = text_encoder.config.hidden_size
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=width,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(16, 32),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=8,
        sample_size=16,
    )
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False)
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


@torch.no_grad()
def _conditioning(pipe: Any, prompts: list[str]) -> torch.Tensor:
    """The UNet conditioning of ``prompts`` (last hidden state of the pipeline's text encoder)."""
    prompt_embeds, _ = pipe.encode_prompt(
        prompts, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False
    )
    return prompt_embeds


def _pipeline_check(pipe: Any, safe_prompts: list[str], unsafe_prompts: list[str]) -> dict[str, float]:
    """How close the conditioning of unsafe prompts is to that of their safe rewrites (mean cosine of the
    flattened conditioning), and to the conditioning of the *other* items' safe prompts (a baseline)."""
    cond_s = _conditioning(pipe, safe_prompts).flatten(1)
    cond_u = _conditioning(pipe, unsafe_prompts).flatten(1)
    cos = torch.nn.functional.normalize(cond_u, dim=-1) @ torch.nn.functional.normalize(cond_s, dim=-1).T
    n = cos.shape[0]
    return {
        "unsafe_to_own_safe_cosine": cos.diag().mean().item(),
        "unsafe_to_other_safe_cosine": ((cos.sum() - cos.diag().sum()) / (n * n - n)).item(),
    }


# ---------------------------------------------------------------------------- reporting


def format_table(results: dict[str, Any]) -> str:
    before, after = results["pretrained"], results["safe"]
    rows = [
        ("safe T->V R@1", "safe_t2v_r1"),
        ("safe V->T R@1", "safe_v2t_r1"),
        ("T*->(V u V*) R@1 (safe GT)", "unsafe_t2v_r1"),
        ("V*->(T u T*) R@1 (safe GT)", "unsafe_v2t_r1"),
        ("T* top-1 unsafe share", "unsafe_text_top1_unsafe_share"),
        ("V* top-1 unsafe share", "unsafe_image_top1_unsafe_share"),
    ]
    both = results.get("safe_both_finetuned")
    lines = [
        "Safe-CLIP column: each fine-tuned encoder against the original other tower (as deployed in SD / LLaVA);",
        "both-FT column: both towers fine-tuned.",
        f"{'metric':<34}{'pre-trained':>12}{'Safe-CLIP':>12}{'change':>10}{'both-FT':>10}",
        "-" * 78,
    ]
    for label, key in rows:
        extra = f"{both[key]:>10.3f}" if both else ""
        lines.append(f"{label:<34}{before[key]:>12.3f}{after[key]:>12.3f}{after[key] - before[key]:>+10.3f}{extra}")
    for concept in before["per_concept"]:
        for side, key in (("T*", "unsafe_text_top1_unsafe_share"), ("V*", "unsafe_image_top1_unsafe_share")):
            b, a = before["per_concept"][concept][key], after["per_concept"][concept][key]
            label = f"  {concept}: {side} top-1 unsafe share"
            lines.append(f"{label:<34}{b:>12.3f}{a:>12.3f}{a - b:>+10.3f}")
    sd = results.get("stable_diffusion")
    if sd:
        lines.append("-" * 68)
        lines.append("tiny SD pipeline, cosine of unsafe-prompt conditioning to its safe prompt's:")
        lines.append(
            f"{'  own safe prompt':<34}{sd['before']['unsafe_to_own_safe_cosine']:>12.3f}"
            f"{sd['after']['unsafe_to_own_safe_cosine']:>12.3f}"
        )
        lines.append(
            f"{'  other safe prompts (baseline)':<34}{sd['before']['unsafe_to_other_safe_cosine']:>12.3f}"
            f"{sd['after']['unsafe_to_other_safe_cosine']:>12.3f}"
        )
    return "\n".join(lines)


def save_plot(results: dict[str, Any], path: Path) -> Path | None:
    """Bar chart of the before/after figures; None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    before, after = results["pretrained"], results["safe"]
    labels = ["safe T->V\nR@1", "safe V->T\nR@1", "T* -> unsafe\nat top-1", "V* -> unsafe\nat top-1"]
    keys = list(RESULT_KEYS)
    for concept in before["per_concept"]:
        labels += [f"{concept}\nT* unsafe", f"{concept}\nV* unsafe"]
    values_b = [before[k] for k in keys] + [
        before["per_concept"][c][k] for c in before["per_concept"] for k in keys[2:]
    ]
    values_a = [after[k] for k in keys] + [after["per_concept"][c][k] for c in after["per_concept"] for k in keys[2:]]
    fig, ax = plt.subplots(figsize=(max(8, len(labels) * 0.9), 4))
    x = torch.arange(len(labels)).float()
    ax.bar(x - 0.2, values_b, width=0.4, label="pre-trained tiny CLIP")
    ax.bar(x + 0.2, values_a, width=0.4, label="after Safe-CLIP")
    ax.set_xticks(x.tolist(), labels, fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("fraction")
    ax.set_title("Safe-CLIP on the synthetic world: safe retrieval kept, unsafe retrieval redirected")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------- world and pre-training


@dataclass
class DemoWorld:
    """Steps 1-2 of the demo: the data sets and the pre-trained tiny CLIP, with its test figures."""

    settings: DemoSettings
    tokenizer: Any
    image_processor: Any
    train_set: EncodedQuadruplets
    val_set: EncodedQuadruplets
    test_set: EncodedQuadruplets
    test_world: SyntheticWorld
    tags: list[str]
    text: torch.nn.Module
    vision: torch.nn.Module
    original_emb: dict[str, torch.Tensor]
    pretrained: dict[str, Any]
    timings: dict[str, float]


def prepare_world(settings: DemoSettings, say: Any = None, progress: bool = False) -> DemoWorld:
    """Build the synthetic world and pre-train the tiny CLIP (demo steps 1 and 2)."""
    s = settings
    say = say or (lambda *a, **k: None)
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    say(f"[1/6] synthetic world: {s.train_size} train, {s.val_size} validation, {s.test_size} test quadruplets")
    tokenizer = build_tokenizer(s.max_length)
    processor = build_image_processor(s.image_size)
    collator = QuadrupletCollator(tokenizer, processor)
    train_world = SyntheticWorld(s.train_size, seed=s.seed, image_size=s.image_size)
    val_world = SyntheticWorld(s.val_size, seed=s.seed + 1, image_size=s.image_size, distinct=True)
    test_world = SyntheticWorld(s.test_size, seed=s.seed + 2, image_size=s.image_size, distinct=True)
    train_set, val_set, test_set = (EncodedQuadruplets(w, collator) for w in (train_world, val_world, test_world))
    tags = [test_world.tag(i) for i in range(len(test_world))]
    timings["data"] = round(time.perf_counter() - clock, 2)
    clock = time.perf_counter()

    say(f"[2/6] pre-training a tiny CLIP ({s.layers} layers, width {s.width}) on safe and unsafe pairs")
    torch.manual_seed(s.seed)
    text, vision = tiny_clip(
        tokenizer, s.image_size, width=s.width, layers=s.layers, heads=s.heads, projection_dim=s.width
    )
    pretrain_clip(
        text,
        vision,
        train_set,
        epochs=s.pretrain_epochs,
        lr=s.pretrain_lr,
        batch_size=s.pretrain_batch_size,
        seed=s.seed,
        log=say if progress else None,
    )
    original_emb = embed(
        lambda i, m: text(input_ids=i, attention_mask=m).text_embeds,
        lambda p: vision(pixel_values=p).image_embeds,
        test_set,
    )
    pretrained = measure(original_emb, tags)
    timings["pretrain"] = round(time.perf_counter() - clock, 2)
    return DemoWorld(
        s,
        tokenizer,
        processor,
        train_set,
        val_set,
        test_set,
        test_world,
        tags,
        text,
        vision,
        original_emb,
        pretrained,
        timings,
    )


# ---------------------------------------------------------------------------- HySAC


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


def _run_config(output_dir: Path, s: DemoSettings, progress: bool, overrides: list[str]) -> TrainConfig:
    """The demo's training run config: the world's sizes and seed, no step checkpoints, then `overrides`."""
    return load_config(
        None,
        [
            f"output_dir={output_dir}",
            f"base_model={BASE_MODEL_NAME}",
            f"seed={s.seed}",
            f"data.image_size={s.image_size}",
            f"data.train_size={s.train_size}",
            f"data.val_size={s.val_size}",
            f"data.seed={s.seed}",
            "save_every_steps=0",
            "keep_checkpoints=1",
            f"progress={str(progress).lower()}",
            *overrides,
        ],
    )


def run_hysac_demo(
    out_dir: str | Path,
    world: DemoWorld,
    towers: tuple[torch.nn.Module, torch.nn.Module],
    settings: HySACDemoSettings | None = None,
    *,
    progress: bool = False,
) -> dict[str, Any]:
    """HySAC fine-tuning of ``towers`` (the pre-trained tiny CLIP, not yet LoRA-wrapped), bounds from the
    validation set, export, and the figures on the test set.

    Returns ``classification`` (accuracy at the bounds and AUROC of the root distance, texts and images),
    ``retrieval`` / ``traversal`` (``eval.hysac.hysac_retrieval`` without / with traversal), the headline
    figures (``text_auroc``, ``image_auroc``, ``unsafe_text_top1_safe_share`` and ``..._traversal``,
    ``safe_t2v_r1`` / ``safe_v2t_r1`` and the pre-trained ones), ``bounds``, ``exported`` and ``training``.
    """
    from eval.hysac import evaluate_hysac
    from train.hysac_export import export_hysac, validation_bounds
    from train.model import HySACTrainModel

    settings = settings or HySACDemoSettings()
    s = world.settings
    out = Path(out_dir)
    cfg = _run_config(out / "hysac", s, progress, ["method=hysac", *settings.finetune])
    torch.manual_seed(s.seed)
    model = HySACTrainModel(
        *towers,
        cfg.lora,
        cfg.hysac,
        base_model=BASE_MODEL_NAME,
        tokenizer=world.tokenizer,
        image_processor=world.image_processor,
    )
    result = train_safe_clip(cfg, model, world.train_set, world.val_set, stack_encoded, resume=False)
    model.eval()
    curvature = model.hysac.curvature.detach()
    bounds = validation_bounds(model, world.val_set, stack_encoded)
    with torch.no_grad():
        emb = {k: v.float() for k, v in embed(model.encode_text, model.encode_image, world.test_set).items()}
    report = evaluate_hysac(
        "hysac",
        emb,
        curvature,
        bounds,
        target=settings.traversal_target,  # type: ignore[arg-type]
        strength=settings.traversal_strength,
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
        "classification": report.classification,
        "retrieval": report.retrieval,
        "traversal": report.traversal,
        "traversal_boundaries": report.boundaries,
        "curvature": curvature.item(),
        "bounds": bounds.to_dict(),
        "exported": str(exported),
        "training": {
            "best_epoch": result.best_epoch,
            "epochs_run": result.epochs_run,
            "global_step": result.global_step,
            "history": result.history,
        },
        "settings": dataclasses.asdict(settings),
        "config_digest": cfg.digest(),
    }


def format_hysac_table(h: dict[str, Any]) -> str:
    """The HySAC part of the printed table."""
    lines = [
        "HySAC (same pre-trained tiny CLIP; root distance = unsafe score; retrieval by Lorentz distance):",
        f"{'metric':<40}{'pre-trained':>12}{'HySAC':>12}{'traversal':>12}",
        "-" * 76,
    ]
    lines.append(f"{'AUROC root distance, texts S vs U':<40}{'':>12}{h['text_auroc']:>12.3f}")
    lines.append(f"{'AUROC root distance, images V vs G':<40}{'':>12}{h['image_auroc']:>12.3f}")
    lines.append(
        f"{'accuracy at bounds, texts / images':<40}{'':>12}{h['text_accuracy']:>12.3f}{h['image_accuracy']:>12.3f}"
    )
    lines.append(f"{'safe T->V R@1':<40}{h['pretrained_safe_t2v_r1']:>12.3f}{h['safe_t2v_r1']:>12.3f}")
    lines.append(f"{'safe V->T R@1':<40}{h['pretrained_safe_v2t_r1']:>12.3f}{h['safe_v2t_r1']:>12.3f}")
    lines.append(
        f"{'T* top-1 safe share (in V u V*)':<40}{h['pretrained_unsafe_text_top1_safe_share']:>12.3f}"
        f"{h['unsafe_text_top1_safe_share']:>12.3f}{h['unsafe_text_top1_safe_share_traversal']:>12.3f}"
    )
    lines.append(
        f"{'V* top-1 safe share (in T u T*)':<40}{'':>12}{h['unsafe_image_top1_safe_share']:>12.3f}"
        f"{h['unsafe_image_top1_safe_share_traversal']:>12.3f}"
    )
    return "\n".join(lines)


# ---------------------------------------------------------------------------- the whole demo


def run_demo(
    out_dir: str | Path,
    settings: DemoSettings | None = None,
    progress: bool = True,
    *,
    hysac: bool = False,
    hysac_settings: HySACDemoSettings | None = None,
) -> dict[str, Any]:
    """Run every step of the demo into ``out_dir``; returns what ``demo_results.json`` holds.

    With ``hysac`` a HySAC run from the same pre-trained tiny CLIP follows (``run_hysac_demo``); its
    figures go under the key ``"hysac"`` and into the printed table. The Safe-CLIP results are unchanged.
    """
    settings = settings or DemoSettings()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    say = print if progress else (lambda *a, **k: None)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 2)
        clock = now

    s = settings
    world = prepare_world(s, say, progress)
    tokenizer, train_set, val_set, test_set = world.tokenizer, world.train_set, world.val_set, world.test_set
    test_world, tags, text, vision = world.test_world, world.tags, world.text, world.vision
    original_emb, pretrained = world.original_emb, world.pretrained
    timings.update(world.timings)
    clock = time.perf_counter()
    # HySAC starts from the same pre-trained towers; Safe-CLIP's LoRA is injected into them in place
    hysac_towers = (copy.deepcopy(text), copy.deepcopy(vision)) if hysac else None
    sd_text_encoder = _plain_text_encoder(text)  # T0 for the pipeline, before LoRA wraps the tower

    say("[3/6] Safe-CLIP fine-tuning (LoRA on both towers, eight-term loss, cached frozen references)")
    cfg = _run_config(out / "safeclip", s, progress, s.finetune)
    model = SafeClipModel(text, vision, cfg.lora)
    result = train_safe_clip(cfg, model, train_set, val_set, stack_encoded, resume=False)
    model.eval()
    tuned_emb = embed(model.encode_text, model.encode_image, test_set)
    safe = measure_deployed(tuned_emb, original_emb, tags)
    safe_both = measure(tuned_emb, tags)
    lap("finetune")

    say("[4/6] merging LoRA and exporting the encoders")
    exported = export_safe_clip(
        model,
        out / "exported",
        base_model=BASE_MODEL_NAME,
        config=cfg,
        data_description=f"synthetic world seed {s.seed}, {s.train_size} quadruplets",
        metadata={"demo": True},
    )
    lap("export")

    say("[5/6] tiny Stable Diffusion pipeline: make_safe with the exported text encoder")
    from safe_encoders import make_safe

    pipe = tiny_sd_pipeline(sd_text_encoder, tokenizer, seed=s.seed)
    safe_prompts = [test_world.captions(i)[0] for i in range(64)]
    unsafe_prompts = [test_world.captions(i)[1] for i in range(64)]
    sd_before = _pipeline_check(pipe, safe_prompts, unsafe_prompts)
    make_safe(pipe, checkpoint=str(exported["text"]))
    sd_after = _pipeline_check(pipe, safe_prompts, unsafe_prompts)
    image = pipe(
        unsafe_prompts[0],
        num_inference_steps=2,
        height=16,
        width=16,
        output_type="np",
        generator=torch.Generator().manual_seed(s.seed),
    ).images[0]
    lap("stable_diffusion")

    results: dict[str, Any] = {
        "pretrained": pretrained,
        "safe": safe,
        "safe_both_finetuned": safe_both,
        "exported": {k: str(v) for k, v in exported.items()},
        "stable_diffusion": {
            "before": sd_before,
            "after": sd_after,
            "image_shape": list(image.shape),
            "example_prompt": unsafe_prompts[0],
        },
        "training": {
            "best_epoch": result.best_epoch,
            "epochs_run": result.epochs_run,
            "global_step": result.global_step,
            "history": result.history,
        },
        "settings": dataclasses.asdict(s),
        "config_digest": cfg.digest(),
        "timings_s": timings,
    }
    if hysac_towers is not None:
        say("[+] HySAC from the same pre-trained tiny CLIP")
        results["hysac"] = run_hysac_demo(out, world, hysac_towers, hysac_settings, progress=progress)
        lap("hysac")
    say("[6/6] results")
    table = format_table(results)
    if "hysac" in results:
        table += "\n" + format_hysac_table(results["hysac"])
    say(table)
    (out / "demo_table.txt").write_text(table + "\n")
    plot = save_plot(results, out / "demo_results.png")
    if plot is not None:
        results["plot"] = str(plot)
    timings["total"] = round(sum(timings.values()), 2)
    (out / "demo_results.json").write_text(json.dumps(results, indent=2))
    say(f"wrote {out / 'demo_results.json'}" + (f" and {plot}" if plot else "") + f" in {timings['total']:.0f} s")
    return results
