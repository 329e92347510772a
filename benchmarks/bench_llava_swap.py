"""CPU time and peak memory of make_safe vs one load_*_encoder of the same file, real encoder sizes, before / after.

Two full-size encoders from the real configs in tests/fixtures/hub (random fp32 weights): the LLaVA-1.5
vision tower (CLIP ViT-L/14-336, inside a LLaVA model whose language model is tiny: only the tower
matters) and Stable Diffusion v1.4's text encoder (CLIP ViT-L/14 text). Like with like:

- every call runs in a fresh process, with everything imported (torch, accelerate, safe_encoders and the
  transformers CLIP classes, which `load_*_encoder` would otherwise import lazily) BEFORE the timer, on
  one torch thread; the make_safe target is loaded as users load one (`from_pretrained` of a saved
  folder, its weights read once as a forward pass would) before the timer too;
- the timed region is the call alone: `load_*_encoder(FILE)` vs `make_safe(target, FILE)`, the latter twice:
  "make_safe" with an empty trust folder (the first make_safe from FILE on the machine: FILE is read and
  checked whole) and "again" with a trust folder in which an earlier, untimed make_safe from FILE
  remembered its check (`safe_encoders.sources.checked`; FILE unchanged, so it is not checked again);
- calls alternate (load, make_safe, load, make_safe, ...; before and after code in turn) so that a
  change in the machine's load hits both sides; each figure is the median of `--repeat` runs with its
  range [min-max];
- CPU = user + system time of the process during the call (what a busy machine leaves roughly
  unchanged); x = make_safe / load of the same file with the same code; peak = rise of the process's
  peak RSS (VmHWM) over its RSS before the call, / the encoder's bytes.

    taskset -c 1 python benchmarks/bench_llava_swap.py [--before REV] [--repeat 3] [--cases sd-text,llava]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HUB = ROOT / "tests" / "fixtures" / "hub"
CASES = {  # name: (label, encoder kind, config file)
    "sd-text": ("SD v1.4 text encoder (ViT-L/14)", "text",
                HUB / "CompVis__stable-diffusion-v1-4" / "text_encoder" / "config.json"),
    "llava": ("LLaVA-1.5 tower (ViT-L/14-336)", "vision", HUB / "llava-hf__llava-1.5-7b-hf" / "config.json"),
}  # fmt: skip
CALLS = ("load", "make_safe", "again")  # again: make_safe from a file whose check is remembered


def _status(field: str) -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field)) / 1024


def _target_class(case: str):
    from transformers import CLIPTextModel, LlavaForConditionalGeneration

    return CLIPTextModel if case == "sd-text" else LlavaForConditionalGeneration


def _child(case: str, call: str, file: str, target_folder: str) -> None:
    import accelerate  # noqa: F401  (load_*_encoder imports it and the CLIP classes lazily: not in the timer)
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModel  # noqa: F401

    import safe_encoders
    from safe_encoders import load_text_encoder, load_vision_encoder, make_safe

    torch.set_num_threads(1)
    kind = CASES[case][1]
    target = None
    if call in ("make_safe", "again"):
        target = _target_class(case).from_pretrained(target_folder)
        with torch.no_grad():
            for p in target.parameters():  # resident, as after a first forward pass
                p.sum()
        run = lambda: make_safe(target, file)  # noqa: E731
    else:
        load = load_text_encoder if kind == "text" else load_vision_encoder
        run = lambda: load(file, with_projection=False)  # noqa: E731
    with contextlib.suppress(OSError):  # peak RSS := current RSS: the set-up's transients do not count
        Path("/proc/self/clear_refs").write_text("5")
    rss, wall, cpu = _status("VmRSS"), time.perf_counter(), time.process_time()
    run()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(json.dumps({"wall": wall, "cpu": cpu, "peak_mb": _status("VmHWM") - rss, "code": safe_encoders.__file__}))


def _write_files(case: str, folder: Path) -> tuple[Path, Path]:
    """The safe encoder file (seed 0) and a saved target model (seed 1) of the case."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlavaConfig

    from safe_encoders import export_encoder

    _, kind, config = CASES[case]
    raw = json.loads(config.read_text())
    torch.manual_seed(0)
    if kind == "vision":
        encoder = CLIPVisionModel(CLIPVisionConfig.from_dict(raw["vision_config"]))
    else:
        encoder = CLIPTextModel(CLIPTextConfig.from_dict(raw))
    file = export_encoder(encoder, folder / f"{case}-safe.safetensors")
    del encoder
    torch.manual_seed(1)
    if case == "llava":
        text = LlamaConfig(vocab_size=raw["text_config"]["vocab_size"], hidden_size=64, intermediate_size=128,
                           num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2)  # fmt: skip
        config = LlavaConfig(vision_config=raw["vision_config"], text_config=text.to_dict())
        target = _target_class(case)(config)
    else:
        target = CLIPTextModel(CLIPTextConfig.from_dict(raw))
    target.save_pretrained(folder / f"{case}-target")
    return file, folder / f"{case}-target"


def _run(code_dir: Path, case: str, call: str, file: Path, target: Path, trust: Path | None = None) -> dict:
    """One call in a fresh process; its trust folder is `trust`, else a new empty one."""
    with tempfile.TemporaryDirectory() as empty:
        env = {**os.environ, "PYTHONPATH": str(code_dir), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
               "SAFE_ENCODERS_TRUST_DIR": str(trust or empty)}  # fmt: skip
        out = subprocess.run([sys.executable, __file__, "--child", case, call, str(file), str(target)], env=env,
                             capture_output=True, text=True, check=True, cwd=code_dir)  # fmt: skip
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert Path(result["code"]).resolve().is_relative_to(code_dir.resolve()), result
    return result


def _summary(values: list[float], digits: int = 2) -> str:
    return f"{statistics.median(values):.{digits}f} [{min(values):.{digits}f}-{max(values):.{digits}f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="a70afc3", help="git revision of the 'before' code")
    parser.add_argument("--repeat", type=int, default=3, help="runs per call (median and range shown)")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    args = parser.parse_args()
    print(
        f"{time.strftime('%Y-%m-%d %H:%M:%S')}  load average {os.getloadavg()[0]:.1f}  cpus {os.sched_getaffinity(0)}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        before = Path(tmp) / "before"
        before.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.before, "safe_encoders"],
                                 capture_output=True, check=True).stdout  # fmt: skip
        subprocess.run(["tar", "-x", "-C", str(before)], input=archive, check=True)
        versions = {"before": before, "after": ROOT}
        print(f"before = {args.before}, after = this checkout; median [min-max] of {args.repeat} runs, one thread")
        print(f"{'case':34s} {'code':6s} {'call':9s} {'cpu s':>18s} {'cpu x load':>17s} {'wall s':>18s} "
              f"{'peak / encoder':>20s}")  # fmt: skip
        for case in args.cases.split(","):
            file, target = _write_files(case, Path(tmp))
            size = file.stat().st_size / 2**20
            time.sleep(max(0.0, file.stat().st_ctime + 2.5 - time.time()))  # a check is remembered for settled files
            trust = {version: Path(tmp) / f"trust-{case}-{version}" for version in versions}
            for version, code in versions.items():  # untimed: the make_safe whose check "again" reuses
                _run(code, case, "make_safe", file, target, trust[version])
            runs = {(v, c): [] for v in versions for c in CALLS}
            for _ in range(args.repeat):
                for version, code in versions.items():
                    for call in CALLS:
                        kept = trust[version] if call == "again" else None
                        runs[version, call].append(_run(code, case, call, file, target, kept))
            for version in versions:
                loads = runs[version, "load"]
                for call in CALLS:
                    rows = runs[version, call]
                    ratio = [r["cpu"] / one["cpu"] for r, one in zip(rows, loads, strict=True)]
                    print(f"{CASES[case][0]:34s} {version:6s} {call:9s} {_summary([r['cpu'] for r in rows]):>18s} "
                          f"{_summary(ratio):>17s} {_summary([r['wall'] for r in rows]):>18s} "
                          f"{_summary([r['peak_mb'] / size for r in rows], 3):>20s}")  # fmt: skip
            print(f"  ({size:.0f} MB encoder)")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(*sys.argv[2:6])
    else:
        main()
