"""verify vs loading: what checking an encoder against the trust store costs, next to one load of it.

Two full-size encoders built from the real configs in tests/fixtures/hub (random fp32 weights): Stable
Diffusion v1.4's text encoder (CLIP ViT-L/14 text) and the LLaVA 1.5 vision tower (CLIP ViT-L/14-336).
For each: `trust_checkpoint` of its file (once per machine), `verify_encoder` (what `is_safe(verify=True)`
runs: module walk + sha256 of every tensor), `verify_encoder(cached=True)` repeated (what a per-call gate
can afford), and one `load_*_encoder` of the same file; x = ratio to that load.

Then `safe-encoders verify` (`trust.folder.verify_folder`, files only) on a saved SD pipeline folder holding
that full-size text encoder, next to `StableDiffusionPipeline.from_pretrained` of the same folder. The UNet and
VAE are tiny (a real SD UNet is 3.4 GB): the load there is mostly the text encoder's, so the real ratio is
far larger than the one printed.

    OMP_NUM_THREADS=1 python benchmarks/bench_verify.py [--repeat N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
HUB = ROOT / "tests" / "fixtures" / "hub"
SD_TEXT_CONFIG = HUB / "CompVis__stable-diffusion-v1-4" / "text_encoder" / "config.json"
LLAVA_CONFIG = HUB / "llava-hf__llava-1.5-7b-hf" / "config.json"


def best(repeat: int, call: Callable[[], object]) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return min(times)


def random_encoder(kind: str):
    """A full-size CLIP encoder from the real config, random weights (filled directly: no slow init)."""
    import torch
    from accelerate import init_empty_weights
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModel

    if kind == "text":
        cls, config = CLIPTextModel, CLIPTextConfig.from_dict(json.loads(SD_TEXT_CONFIG.read_text()))
    else:
        cls, config = CLIPVisionModel, CLIPVisionConfig.from_dict(json.loads(LLAVA_CONFIG.read_text())["vision_config"])
    with init_empty_weights(include_buffers=False):
        module = cls(config)
    module.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.normal_(0, 0.02, generator=generator)
        for name, buffer in module.named_buffers():
            if name.endswith("position_ids"):
                buffer.copy_(torch.arange(buffer.shape[-1]).expand(buffer.shape))
    return module.eval()


def bench_encoder(name: str, kind: str, folder: Path, repeat: int) -> list[str]:
    from safe_encoders import (
        export_encoder,
        load_text_encoder,
        load_vision_encoder,
        make_safe,
        trust_checkpoint,
        verify_encoder,
    )

    module = random_encoder(kind)
    file = export_encoder(module, folder / f"{kind}.safetensors")
    trust = best(1, lambda: trust_checkpoint(file))
    make_safe(module, file)
    load = {"text": load_text_encoder, "vision": load_vision_encoder}[kind]
    t_load = best(repeat, lambda: load(file, with_projection=False))
    t_verify = best(repeat, lambda: verify_encoder(module))
    assert verify_encoder(module).verified
    verify_encoder(module, cached=True)
    t_cached = best(repeat, lambda: verify_encoder(module, cached=True))
    size = sum(p.numel() * p.element_size() for p in module.parameters()) / 1e6
    return [
        f"{name} ({size:.0f} MB fp32)",
        row(f"one load_{kind}_encoder", t_load, t_load),
        row("verify_encoder (full)", t_verify, t_load),
        row("verify_encoder(cached=True), unchanged", t_cached, t_load),
        row("trust_checkpoint (once per machine)", trust, t_load),
    ]


def row(label: str, seconds: float, reference: float) -> str:
    return f"  {label:42} {seconds:8.3f} s  {seconds / reference:6.3f}x"


def bench_folder(folder: Path, repeat: int) -> list[str]:
    from diffusers import StableDiffusionPipeline

    from safe_encoders import export_encoder, make_safe
    from safe_encoders.trust.folder import verify_folder
    from tests.tiny_models import tiny_sd_pipeline

    pipe = tiny_sd_pipeline("v1")
    pipe.text_encoder = random_encoder("text")
    file = folder / "text.safetensors"  # trusted by bench_encoder
    if not file.exists():
        export_encoder(pipe.text_encoder, file)
    make_safe(pipe, file)
    pipe.save_pretrained(folder / "pipeline")
    t_verify = best(repeat, lambda: verify_folder(str(folder / "pipeline")))
    assert all(verdict.verified for _, verdict in verify_folder(str(folder / "pipeline")))
    t_load = best(repeat, lambda: StableDiffusionPipeline.from_pretrained(folder / "pipeline"))
    return [
        "saved SD pipeline folder (full-size text encoder, tiny UNet / VAE)",
        row("StableDiffusionPipeline.from_pretrained", t_load, t_load),
        row("safe-encoders verify (files only)", t_verify, t_load),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="best of N runs (default 3)")
    args = parser.parse_args()
    import torch

    with tempfile.TemporaryDirectory(prefix="bench-verify-") as tmp:
        os.environ["SAFE_ENCODERS_TRUST_DIR"] = str(Path(tmp) / "trust")  # never the user's store
        lines = [f"torch threads: {torch.get_num_threads()}, best of {args.repeat}"]
        lines += bench_encoder("SD v1.4 text encoder (ViT-L/14 text)", "text", Path(tmp), args.repeat)
        lines += bench_folder(Path(tmp), args.repeat)
        lines += bench_encoder("LLaVA-1.5 vision tower (ViT-L/14-336)", "vision", Path(tmp), args.repeat)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
