"""make_safe vs loading the same encoder once: time and peak memory, before and after, side by side in one run.

Two full-size encoders built from the real configs in tests/fixtures/hub (random fp32 weights):
the LLaVA 1.5 vision tower (CLIP ViT-L/14-336, inside a LLaVA model whose language model is tiny:
only the tower matters here) and Stable Diffusion v1.4's text encoder (CLIP ViT-L/14 text). For
each, `make_safe` on a loaded target is compared with one `load_*_encoder` of the same file, with
the code of this checkout ("after") and of a base git revision ("before", default b8a4f15, the
commit before the streaming swap), each case in its own process. Memory is the rise of the
process's peak RSS (VmHWM) over its RSS just before the call; x = ratio to one load of the same
file with the same code.

    python benchmarks/bench_llava_swap.py [--before REV] [--repeat N]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HUB = ROOT / "tests" / "fixtures" / "hub"
LLAVA_CONFIG = HUB / "llava-hf__llava-1.5-7b-hf" / "config.json"
SD_TEXT_CONFIG = HUB / "CompVis__stable-diffusion-v1-4" / "text_encoder" / "config.json"

TARGETS = {
    "llava": """
from accelerate import init_empty_weights
from transformers import LlamaConfig, LlavaConfig, LlavaForConditionalGeneration
raw = json.loads(Path(CONFIG).read_text())
text = LlamaConfig(vocab_size=raw["text_config"]["vocab_size"], hidden_size=64, intermediate_size=128,
                   num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2)
with init_empty_weights(include_buffers=False):
    target = LlavaForConditionalGeneration(LlavaConfig(vision_config=raw["vision_config"], text_config=text.to_dict()))
""",
    "sd-text": """
from accelerate import init_empty_weights
from transformers import CLIPTextConfig, CLIPTextModel
with init_empty_weights(include_buffers=False):
    target = CLIPTextModel(CLIPTextConfig.from_dict(json.loads(Path(CONFIG).read_text())))
""",
}
RESIDENT = """
target.to_empty(device="cpu")
for p in target.parameters():  # a loaded model's weights are resident: make them so before measuring
    p.data.zero_()
"""
CALLS = {
    "load": "from safe_encoders import load_{kind}_encoder\nload_{kind}_encoder(FILE, with_projection=False)",
    "make_safe": "from safe_encoders import make_safe\nmake_safe(target, FILE)",
}
CASES = {  # name: (target, encoder kind, config file)
    "LLaVA-1.5 tower (ViT-L/14-336)": ("llava", "vision", LLAVA_CONFIG),
    "SD v1.4 text encoder (ViT-L/14)": ("sd-text", "text", SD_TEXT_CONFIG),
}


def _status(field: str) -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field)) / 1024


def _child(case: str, call: str, file: str) -> None:
    import json
    from pathlib import Path

    import torch

    import safe_encoders

    torch.set_num_threads(1)  # the same for every case: the machine may be shared
    target_name, kind, config = CASES[case]
    scope = {"FILE": file, "CONFIG": str(config), "json": json, "Path": Path}
    if call == "make_safe":
        exec(TARGETS[target_name] + RESIDENT, scope)
    code = CALLS[call].format(kind=kind)
    with contextlib.suppress(OSError):  # reset the peak RSS to the current RSS: the setup's transients do not count
        Path("/proc/self/clear_refs").write_text("5")
    rss, start, cpu = _status("VmRSS"), time.perf_counter(), time.process_time()
    exec(code, scope)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    rise = _status("VmHWM") - rss
    print(json.dumps({"seconds": seconds, "cpu": cpu, "peak_rise_mb": rise, "code": safe_encoders.__file__}))


def _write_file(case: str, folder: Path) -> Path:
    import json

    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModel

    from safe_encoders import export_encoder

    _, kind, config = CASES[case]
    raw = json.loads(config.read_text())
    torch.manual_seed(0)
    if kind == "vision":
        encoder = CLIPVisionModel(CLIPVisionConfig.from_dict(raw["vision_config"]))
    else:
        encoder = CLIPTextModel(CLIPTextConfig.from_dict(raw))
    return export_encoder(encoder, folder / f"{kind}_encoder.safetensors")


def _run(code_dir: Path, case: str, call: str, file: Path, repeat: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code_dir), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    runs = []
    for _ in range(repeat):
        out = subprocess.run([sys.executable, __file__, "--child", case, call, str(file)], env=env,
                             capture_output=True, text=True, check=True, cwd=code_dir)  # fmt: skip
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    assert all(Path(r["code"]).resolve().is_relative_to(code_dir.resolve()) for r in runs), runs
    return {key: min(r[key] for r in runs) for key in ("seconds", "cpu", "peak_rise_mb")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="b8a4f15", help="git revision of the 'before' code")
    parser.add_argument("--repeat", type=int, default=1, help="runs per case (the fastest / smallest is kept)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        before = Path(tmp) / "before"
        before.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.before, "safe_encoders"],
                                 capture_output=True, check=True).stdout  # fmt: skip
        subprocess.run(["tar", "-x", "-C", str(before)], input=archive, check=True)
        results: dict[tuple[str, str, str], dict] = {}
        sizes = {}
        for case in CASES:
            file = _write_file(case, Path(tmp))
            sizes[case] = file.stat().st_size / 1e6
            for version, code_dir in (("before", before), ("after", ROOT)):
                for call in CALLS:
                    results[case, version, call] = _run(code_dir, case, call, file, args.repeat)
    print(f"before = {args.before}, after = this checkout. wall / cpu = seconds (cpu: user + system time of the "
          "process, less sensitive to a busy machine); x = ratio to one load_*_encoder of the same file, "
          "same code")  # fmt: skip
    columns = f"{'wall':>6s} {'x':>5s} {'cpu':>6s} {'x':>5s} {'peak MB':>7s} {'x':>5s}"
    print(f"{'case':32s} {'MB':>5s} {'call':9s} | before: {columns} | after: {columns}")
    for case in CASES:
        for call in CALLS:
            row = f"{case:32s} {sizes[case]:5.0f} {call:9s} |"
            for version in ("before", "after"):
                r, base = results[case, version, call], results[case, version, "load"]
                row += (
                    f" {version}:"
                    + "".join(
                        f" {r[key]:{width}.{digits}f} {r[key] / base[key]:5.2f}"
                        for key, width, digits in (("seconds", 6, 1), ("cpu", 6, 1), ("peak_rise_mb", 7, 0))
                    )
                    + " |"
                )
            print(row)
        for version in ("before", "after"):
            r, load = results[case, version, "make_safe"], results[case, version, "load"]
            print(f"  {version:6s} make_safe: time {r['seconds'] / load['seconds']:.2f}x (wall) / "
                  f"{r['cpu'] / load['cpu']:.2f}x (cpu) one load (goal <= 0.6), peak RSS rise "
                  f"{r['peak_rise_mb'] / sizes[case]:.2f}x the encoder's bytes (goal <= 0.15)")  # fmt: skip


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        main()
