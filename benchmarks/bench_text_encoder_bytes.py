"""Bytes read from disk to obtain SD 1.x's text encoder, three ways, measured side by side.

1. `load_text_encoder(<full CLIPModel folder>)`: our reader takes only the text tensors.
2. `load_text_encoder(<our text_encoder.safetensors>)`: the converted text-only file.
3. `CLIPModel.from_pretrained(<full folder>)`: instantiating the whole CLIPModel.

A full-size ViT-L/14 CLIPModel checkpoint (random fp32 weights, 1.7 GB) is written to a temporary
folder. Before each case the files are evicted from the page cache, and the case runs in its own
process, which reports /proc/self/io `read_bytes` (what really came from storage, read-ahead
included), its wall time and its peak RSS.

    python benchmarks/bench_text_encoder_bytes.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Each case ends by touching every weight, so lazily memory-mapped tensors are really read.
CASES = {
    "ours, full CLIPModel checkpoint": "from safe_encoders import load_text_encoder; m = load_text_encoder(FULL)",
    "ours, text_encoder.safetensors": "from safe_encoders import load_text_encoder; m = load_text_encoder(TEXT)",
    "CLIPModel.from_pretrained": "from transformers import CLIPModel; m = CLIPModel.from_pretrained(FULL).text_model",
}
TOUCH = "\nfor p in m.parameters(): float(p.float().sum())"


def _read_bytes() -> int:
    with open("/proc/self/io") as io:
        return next(int(line.split()[1]) for line in io if line.startswith("read_bytes"))


def _peak_rss_mb() -> float:
    # VmHWM belongs to this process image (ru_maxrss would include the parent's peak before exec).
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024


def _evict(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)


def _child(code: str, full: str, text: str) -> None:
    import transformers  # noqa: F401

    import safe_encoders  # noqa: F401  (imports are not what we measure)

    start_bytes, start = _read_bytes(), time.perf_counter()
    exec(code + TOUCH, {"FULL": full, "TEXT": text})
    result = {
        "bytes": _read_bytes() - start_bytes,
        "seconds": time.perf_counter() - start,
        "peak_rss_mb": _peak_rss_mb(),
    }
    print(json.dumps(result))


def main() -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import CLIPConfig, CLIPModel

    from safe_encoders import convert_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        full = root / "clip-vit-large-patch14"
        full.mkdir()
        config = CLIPConfig(
            text_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                             projection_dim=768, hidden_act="quick_gelu"),
            vision_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                               image_size=224, patch_size=14, projection_dim=768, hidden_act="quick_gelu"),
            projection_dim=768,
        )  # fmt: skip
        with torch.device("meta"):
            shapes = {k: v.shape for k, v in CLIPModel(config).state_dict().items() if not k.endswith("position_ids")}
        generator = torch.Generator().manual_seed(0)
        save_file({k: torch.randn(s, generator=generator) for k, s in shapes.items()}, full / "model.safetensors",
                  metadata={"format": "pt"})  # fmt: skip
        config.save_pretrained(full)
        text = convert_checkpoint(full, root / "converted")["text"]
        file_mb = (full / "model.safetensors").stat().st_size / 1e6
        print(f"full checkpoint {file_mb:.0f} MB, text-only file {text.stat().st_size / 1e6:.0f} MB")
        results = {}
        for name, code in CASES.items():
            _evict(root)
            if os.environ.get("BENCH_DEBUG"):
                subprocess.run(["fincore", *map(str, root.rglob("*.safetensors"))])
            out = subprocess.run(
                [sys.executable, __file__, "--child", code, str(full), str(text)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            results[name] = json.loads(out.stdout.strip().splitlines()[-1])
        base = results["CLIPModel.from_pretrained"]
        print(f"{'case':36s} {'MB read':>9s} {'x':>6s} {'seconds':>8s} {'x':>6s} {'peak RSS MB':>12s}")
        for name, r in results.items():
            print(
                f"{name:36s} {r['bytes'] / 1e6:9.0f} {r['bytes'] / base['bytes']:6.2f} {r['seconds']:8.2f} "
                f"{r['seconds'] / base['seconds']:6.2f} {r['peak_rss_mb']:12.0f}"
            )
        print("x = ratio to CLIPModel.from_pretrained (same run, page cache evicted before each case)")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(*sys.argv[2:5])
    else:
        main()
