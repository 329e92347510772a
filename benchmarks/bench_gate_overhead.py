"""HySAC gate overhead on an SD 1.x pipeline at real architecture size (random weights, CPU).

The pipeline: SD 1.5's text encoder (tests/fixtures/hub config: CLIP ViT-L/14 text, 123M), SD 1.x's UNet
(block widths 320/640/1280/1280, 2 layers per block, cross-attention 768: 860M) and VAE (128/256/512/512),
at a reduced resolution (`--size`, default 64 px: 8x8 latents) and `--steps` steps. The classifier: a HySAC on
CLIP ViT-L/14 (tests/fixtures/hub/openai__clip-vit-large-patch14 config; 428M). Random weights throughout.

Measured, alternating the conditions call by call (same seed), medians with min / max:
- a whole call, ungated vs gated (prompt_policy="block", image_policy="flag");
- the component-level checks alone: the text-encoder hook inside a gated call (the prompt's tokens are
  already checked: found, not scored), the same hook outside a gated call (the decoded text scored), the
  VAE-decoder hook outside a gated call (the decoded image scored), and the redirect verification (a full
  `is_safe(encoder, verify=True)` pass over the Safe-CLIP encoder's weights vs the cheap tensor-version check).

    python benchmarks/bench_gate_overhead.py [--repeats 5] [--steps 2] [--size 64]

Measured once (2 shared CPU cores under a load average of ~12, so absolute times are inflated and noisy;
medians of 5, [min, max]): whole call ungated 74.4 s [36.8, 92.2], gated 85.3 s [47.2, 120.7] (1.15x, within
the spread); text-encoder hook inside a gated call 0.7 ms, outside a call (scores the decoded text) 1.7 s
(the SD text encoder's own forward: 3.7 s); VAE-decoder hook outside a call (scores the image) 10.0 s;
redirect check in full 0.96 s, cheap check 1.1 ms.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
HUB = ROOT / "tests" / "fixtures" / "hub"
PROMPT = "a photo of an astronaut riding a horse on the moon"


def build_text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig.from_pretrained(HUB / "runwayml__stable-diffusion-v1-5" / "text_encoder")
    return CLIPTextModel(config).eval()


def build_pipeline():
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    from tests.tiny_models import clip_tokenizer

    torch.manual_seed(0)
    # SD 1.x's unet/config.json and vae/config.json (not in the fixtures; these are their values)
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=768, attention_head_dim=8,
    )  # fmt: skip
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
    )  # fmt: skip
    pipe = StableDiffusionPipeline(
        vae=vae.eval(), text_encoder=build_text_encoder(), tokenizer=clip_tokenizer(), unet=unet.eval(),
        scheduler=DDIMScheduler(num_train_timesteps=1000, steps_offset=1, clip_sample=False), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_classifier():
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from safe_encoders.hysac import HySAC
    from tests.tiny_models import clip_tokenizer

    torch.manual_seed(1)
    config = CLIPConfig.from_pretrained(HUB / "openai__clip-vit-large-patch14")
    model = HySAC.from_clip_model(CLIPModel(config)).eval()
    model.tokenizer = clip_tokenizer()
    model.image_processor = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    return model


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def alternate(conditions: dict[str, Callable[[], object]], repeats: int) -> dict[str, dict[str, float]]:
    """Run each condition once (warm-up), then `repeats` rounds alternating them; seconds per call."""
    for fn in conditions.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in conditions}
    for _ in range(repeats):
        for name, fn in conditions.items():
            times[name].append(timed(fn))
    return {
        name: {"median_s": statistics.median(ts), "min_s": min(ts), "max_s": max(ts), "n": len(ts)}
        for name, ts in times.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    from safe_encoders import export_encoder, make_safe
    from safe_encoders.hysac import SafetyGate, add_safety_gate
    from safe_encoders.hysac.gate import components

    started = time.perf_counter()
    pipe, classifier = build_pipeline(), build_classifier()
    build_s = time.perf_counter() - started
    threshold = classifier.unsafe_score(texts=[PROMPT], text_threshold=0.0).text.scores.item() + 1.0  # passes

    def call():
        return pipe(PROMPT, num_inference_steps=args.steps, height=args.size, width=args.size, output_type="pt",
                    generator=torch.Generator().manual_seed(0)).images  # fmt: skip

    gate = SafetyGate(classifier=classifier, prompt_policy="block", image_policy="flag", text_threshold=threshold,
                      image_threshold=1e9)  # fmt: skip

    class Toggle:  # a gated call and an ungated call, alternated on the same pipeline
        handle = None

        def gated(self):
            self.handle = self.handle or add_safety_gate(pipe, gate)
            return call()

        def ungated(self):
            if self.handle is not None:
                self.handle.remove()
                self.handle = None
            return call()

    toggle = Toggle()
    whole = alternate({"ungated call": toggle.ungated, "gated call": toggle.gated}, args.repeats)
    toggle.ungated()

    handle = add_safety_gate(pipe, gate)
    slot = handle.state["slots"][0]
    ids = pipe.tokenizer(PROMPT, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    known = components.known_rows(pipe, handle.state["slots"], [PROMPT])
    latents = torch.randn(1, 4, args.size // 8, args.size // 8, generator=torch.Generator().manual_seed(0))
    decoded = pipe.vae.decoder(pipe.vae.post_quant_conv(latents))

    def in_call_tokens():
        ctx = components.CallContext(handle, handle.new_report(), components.known_rows(pipe, [slot], [PROMPT]))
        with components.call_context(ctx):
            components.check_tokens(handle, pipe.text_encoder, slot, (ids,), {})

    def outside_tokens():
        components.check_tokens(handle, pipe.text_encoder, slot, (ids,), {})

    decoder_hook = next(iter(pipe.vae.decoder._forward_hooks.values()))

    def outside_decoder():
        decoder_hook(pipe.vae.decoder, (latents,), decoded)

    assert known[slot.name]
    with tempfile.TemporaryDirectory() as tmp:
        safe_file = export_encoder(build_text_encoder(), Path(tmp) / "safe_clip.safetensors")
        safe_encoder = make_safe(build_text_encoder(), safe_file)
    handle.state.pop("verified", None)
    checks = alternate(
        {
            "text-encoder hook, in a gated call (found)": in_call_tokens,
            "text-encoder hook, outside a call (scored)": outside_tokens,
            "VAE-decoder hook, outside a call (scored)": outside_decoder,
            "text encoder forward itself": lambda: pipe.text_encoder(ids),
            "redirect check, full (is_safe verify)": lambda: components.is_trusted_safe_clip(safe_encoder),
            "redirect check, cheap (tensor versions)": lambda: components.trusted_encoder(handle, safe_encoder),
        },
        args.repeats,
    )
    handle.remove()
    overhead = whole["gated call"]["median_s"] / whole["ungated call"]["median_s"]
    print(json.dumps({"setup": {"steps": args.steps, "size": args.size, "repeats": args.repeats,
                                "build_s": round(build_s, 1), "torch_threads": torch.get_num_threads()},
                      "whole_call": whole, "gated_over_ungated": round(overhead, 3), "component_checks": checks},
                     indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
