"""The demo's world and measurements: the synthetic data; a tiny CLIP pre-trained on it with the plain CLIP loss
over safe and unsafe pairs, as web-trained CLIP sees both (the training loop's ``clip`` method); retrieval figures;
and a tiny Stable Diffusion pipeline on its text encoder (``train.demo`` runs the steps)."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from eval.data.synthetic import CONCEPTS, SyntheticWorld, build_image_processor, build_tokenizer
from eval.metrics import safe_clip_retrieval, top1_in_set_share
from train.config import TrainConfig, load_config
from train.data import EncodedQuadruplets, QuadrupletCollator, stack_encoded
from train.demo_progress import StepLines
from train.loop import TrainResult, run_training
from train.methods import method_of
from train.model import TwoTowerModel
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
    pretrain: list[str] = dataclasses.field(
        default_factory=lambda: [
            "optim.epochs=15",
            "optim.lr=2e-3",
            "optim.optimizer=adamw",
            "optim.weight_decay=0.05",
            "optim.warmup_steps=30",
            "optim.schedule=cosine",
            "data.batch_size=128",
        ]
    )
    """Overrides of the pre-training run config (``method=clip``: CLIP's loss over safe and unsafe pairs, every
    weight trained): 15 epochs of AdamW with a 10 % warm-up and a cosine decay. A later override of the same key
    wins, so ``[*DemoSettings().pretrain, "optim.epochs=1"]`` shortens it."""
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
    """Torch CPU threads; None: ``train.demo_progress.DEMO_THREADS``."""


def train_run(
    cfg: TrainConfig, model: TwoTowerModel, train_set: Any, val_set: Any, label: str, say: Any
) -> TrainResult:
    """A demo training run (``run_training``, fresh) that prints a step line with epoch and loss every few seconds
    through ``say`` (None: silent)."""
    hook = StepLines(label, Path(cfg.output_dir), cfg.optim.epochs, say) if say is not None else None
    return run_training(cfg, model, train_set, val_set, stack_encoded, resume=False, on_step=hook)


# ---------------------------------------------------------------------------- steps


def run_config(output_dir: Path, s: DemoSettings, progress: bool, overrides: list[str]) -> TrainConfig:
    """A demo training run's config: the world's sizes and seed, no step checkpoints, then ``overrides``."""
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


def training_summary(result: TrainResult) -> dict[str, Any]:
    """What ``demo_results.json`` records of a training run."""
    return {
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "global_step": result.global_step,
        "history": result.history,
    }


@torch.no_grad()
def embed(model: TwoTowerModel, data: EncodedQuadruplets) -> dict[str, torch.Tensor]:
    """T(S), T(U), V(V), V(G) of every item of ``data`` (one batch: the demo's sets are small)."""
    model.eval()
    return model(data.tensors)


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


def plain_text_encoder(tower: torch.nn.Module) -> torch.nn.Module:
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
    # steps_offset=1, as Stable Diffusion's own scheduler config: diffusers warns about any other value
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, steps_offset=1
    )
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


def pipeline_check(pipe: Any, safe_prompts: list[str], unsafe_prompts: list[str]) -> dict[str, float]:
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


def save_samples(world: SyntheticWorld, folder: Path, count: int = 16) -> Path:
    """The first ``count`` test items as files to try ``safe-encoders scan`` / ``search`` on: ``images/<i>_safe.png``
    and ``images/<i>_unsafe.png``, and ``captions.csv`` (``id,caption``: each item's safe and unsafe caption)."""
    import csv
    import io

    from PIL import Image

    from safe_encoders.atomic import atomic_write_text

    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows = io.StringIO()
    writer = csv.writer(rows)
    writer.writerow(["id", "caption"])
    for i in range(min(count, len(world))):
        item = world[i]
        for kind, array, caption in (
            ("safe", item.safe_image, item.safe_text),
            ("unsafe", item.unsafe_image, item.unsafe_text),
        ):
            pixels = array if array.dtype.kind == "u" else (array.clip(0, 1) * 255).round().astype("uint8")
            Image.fromarray(pixels).save(images / f"{i:03d}_{kind}.png")
            writer.writerow([f"{i:03d}_{kind}", caption])
    atomic_write_text(folder / "captions.csv", rows.getvalue())
    return folder


# ---------------------------------------------------------------------------- the world (steps 1-2)


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
    pretraining: dict[str, Any]
    """The pre-training run (``train.demo.training_summary``)."""
    timings: dict[str, float]


def prepare_world(settings: DemoSettings, out_dir: str | Path, say: Any = None, progress: bool = False) -> DemoWorld:
    """Build the synthetic world and pre-train the tiny CLIP (demo steps 1 and 2) through the training loop
    (``method=clip``, run folder ``out_dir/pretrain``); the pre-trained model is saved to ``out_dir/pretrained``.

    ``say`` (e.g. ``print``) receives the step headers and the training's step lines; ``progress`` adds the
    training loop's progress bars."""
    s = settings
    step_lines = say
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
    out = Path(out_dir)
    cfg = run_config(out / "pretrain", s, progress, ["method=clip", *s.pretrain])
    torch.manual_seed(s.seed)
    text, vision = tiny_clip(
        tokenizer, s.image_size, width=s.width, layers=s.layers, heads=s.heads, projection_dim=s.width
    )
    method = method_of(cfg)
    model = method.build(cfg, text, vision, tokenizer, processor)
    result = train_run(cfg, model, train_set, None, "pre-training", step_lines)  # no validation: all epochs
    method.export(model, out / "pretrained", cfg, None, None)
    original_emb = embed(model, test_set)
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
        training_summary(result),
        timings,
    )
