"""make_safe on a LLaVA-sized vision tower vs loading that tower once: time and peak memory, side by side.

The tower is full-size CLIP ViT-L/14-336 (random fp32 weights) inside a LLaVA 1.5 model whose
language model is tiny (only the tower matters here). Each case runs in its own process; the
memory figure is the rise of the process's peak RSS (VmHWM) over its RSS just before the call.

    python benchmarks/bench_llava_swap.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VISION = dict(
    hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, image_size=336,
    patch_size=14, projection_dim=768, hidden_act="quick_gelu",
)  # fmt: skip

SETUP = {
    "load_vision_encoder (one load)": "",
    "make_safe(llava) with the same file": """
from accelerate import init_empty_weights
from transformers import LlamaConfig, LlavaConfig, LlavaForConditionalGeneration
text = LlamaConfig(vocab_size=32064, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                   num_attention_heads=2, num_key_value_heads=2)
with init_empty_weights(include_buffers=False):
    model = LlavaForConditionalGeneration(LlavaConfig(vision_config=VISION, text_config=text.to_dict()))
model.to_empty(device="cpu")
for p in model.parameters():  # a loaded model's weights are resident: make them so before measuring
    p.data.zero_()
""",
}
CALL = {
    "load_vision_encoder (one load)": "from safe_encoders import load_vision_encoder\n"
    "load_vision_encoder(FILE, with_projection=False)",
    "make_safe(llava) with the same file": "from safe_encoders import make_safe\nmake_safe(model, FILE)",
}


def _status(field: str) -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field)) / 1024


def _child(name: str, file: str) -> None:
    import safe_encoders  # noqa: F401

    scope = {"FILE": file, "VISION": VISION}
    exec(SETUP[name], scope)
    rss, start = _status("VmRSS"), time.perf_counter()
    exec(CALL[name], scope)
    print(json.dumps({"seconds": time.perf_counter() - start, "peak_rise_mb": _status("VmHWM") - rss}))


def main() -> None:
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from safe_encoders import export_encoder

    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        tower = CLIPVisionModel(CLIPVisionConfig(**VISION))
        file = export_encoder(tower, Path(tmp) / "vision_encoder.safetensors")
        del tower
        print(f"tower file: {file.stat().st_size / 1e6:.0f} MB (CLIP ViT-L/14-336, fp32)")
        results = {}
        for name in SETUP:
            out = subprocess.run([sys.executable, __file__, "--child", name, str(file)],
                                 capture_output=True, text=True, check=True)  # fmt: skip
            results[name] = json.loads(out.stdout.strip().splitlines()[-1])
    base = results["load_vision_encoder (one load)"]
    print(f"{'case':38s} {'seconds':>8s} {'x':>6s} {'peak rise MB':>13s} {'x':>6s}")
    for name, r in results.items():
        print(f"{name:38s} {r['seconds']:8.2f} {r['seconds'] / base['seconds']:6.2f} "
              f"{r['peak_rise_mb']:13.0f} {r['peak_rise_mb'] / base['peak_rise_mb']:6.2f}")  # fmt: skip
    print("x = ratio to one load of the tower (same run)")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2], sys.argv[3])
    else:
        main()
