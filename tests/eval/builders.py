"""Builders shared by the tests of eval/: paths to the real data files, tiny models saved as eval loads them, and
the subprocess settings and kill-then-resume helpers of the CLI tests."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import time
from pathlib import Path

from tests.tiny_models import HUB_FIXTURES, data_file, tiny_sd_pipeline, tiny_vision_config

REPO = Path(__file__).resolve().parents[2]


def subprocess_env() -> dict[str, str]:
    """Environment for the CLI runs started by tests: offline, one thread per process."""
    import os

    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def shared_file(folder: str, name: str) -> Path:
    """A file of ../shared/fixtures/data, or skip the test when it is absent (see tests.tiny_models.data_file)."""
    if folder != "data":
        raise ValueError(f"only the data files stay in ../shared/fixtures; the rest is in {HUB_FIXTURES}")
    return data_file(name)


def count_items(db: Path) -> int:
    """How many items a results store's SQLite file holds (0 while the run has not created it yet)."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return conn.execute("SELECT COUNT(*) FROM items").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def kill_after_items(args: list[str], db: Path, items: int = 3) -> None:
    """Start the CLI run ``args`` and SIGKILL it once its store ``db`` holds ``items`` items (not one ending first)."""
    proc = subprocess.Popen(args, cwd=REPO, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while count_items(db) < items:
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def build_tiny_sd(folder: Path, seed: int = 0) -> Path:
    """The tiny v1 pipeline of tests/tiny_models.py saved to ``folder`` as an SD v1.4 repo is laid out.

    With the real SD v1.4 scheduler config (PNDM) and a VAE that halves the image side, so that the 32 px images
    the eval tests generate stay cheap.
    """
    from diffusers import PNDMScheduler

    sd14 = HUB_FIXTURES / "CompVis__stable-diffusion-v1-4"
    pipe = tiny_sd_pipeline("v1", seed=seed, vae_blocks=2)
    pipe.scheduler = PNDMScheduler.from_pretrained(sd14 / "scheduler")
    pipe.save_pretrained(folder)
    return folder


def save_tiny_llava_and_safe_tower(root: Path, *, next_: bool = False) -> tuple[Path, Path]:
    """The tiny LLaVA 1.5 (1.6 with ``next_``) of tests/safe_encoders/llava/test_models.py (seed 0) saved to
    ``root/llava`` as a llava-hf repo (with the real LLaVA 1.5 chat template), and a tiny Safe-CLIP tower for it
    (seed 7) exported to ``root/safe.safetensors``; both paths."""
    import torch
    from transformers import CLIPVisionModel

    from safe_encoders import export_encoder
    from tests.safe_encoders.llava.test_models import tiny_llava

    model, processor = tiny_llava(next_=next_, seed=0)
    processor.chat_template = (HUB_FIXTURES / "llava-hf__llava-1.5-7b-hf" / "chat_template.jinja").read_text()
    model.save_pretrained(root / "llava", safe_serialization=True)
    processor.save_pretrained(root / "llava")
    torch.manual_seed(7)
    safe = export_encoder(CLIPVisionModel(tiny_vision_config(image_size=30)).eval(), root / "safe.safetensors")
    return root / "llava", safe


def save_q16_clip(folder: Path, config=None, *, layers: int = 2, seed: int = 0) -> Path:
    """The CLIP vision tower Q16 loads, with random weights, and its image processor, saved to ``folder``.

    ``config`` (a CLIPVisionConfig) defaults to a tiny tower: width 32, ``layers`` deep, 32 px, 16-d projection.
    """
    import torch
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    if config is None:
        config = tiny_vision_config(layers=layers, image_size=32, patch_size=8)
    CLIPVisionModelWithProjection(config).eval().save_pretrained(folder)
    size = config.image_size
    CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(folder)
    return folder


def write_q16_prompts(path: Path, width: int = 16, seed: int = 0) -> Path:
    """A Q16 prompt file as published: a pickled float16 (2, ``width``) array, random from ``seed``."""
    import pickle

    import numpy as np

    prompts = np.random.default_rng(seed).standard_normal((2, width)).astype(np.float16)
    path.write_bytes(pickle.dumps(prompts, protocol=2))
    return path


def write_images(folder, n, seed, *, size=(40, 36)):
    """``n`` random RGB PNGs (``000.png`` ...) of ``size`` in ``folder``, from ``seed``; returns ``folder``."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        arr = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"{i:03d}.png")
    return folder


def sha256_of(path: Path) -> str:
    """The sha256 of a file's bytes, computed here (not by eval's provenance writer)."""
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_provenance(out: Path, command: str) -> tuple[dict, dict[str, str]]:
    """``out/provenance.json`` (checked to name ``command``) and its digests as ``{absolute file path: sha256}``
    (files named by options, and the files of model folders)."""
    import json

    record = json.loads((Path(out) / "provenance.json").read_text())
    assert record["command"] == command
    assert record["libraries"]["torch"] and record["libraries"]["safe-encoders"]
    assert record["device"]["device"]
    digests: dict[str, str] = {}
    for group in ("models", "data"):
        for records in record[group].values():
            for r in records:
                if r["kind"] == "file":
                    digests[r["path"]] = r["sha256"]
                elif isinstance(r.get("sha256"), dict):
                    digests.update({str(Path(r["path"]) / rel): d for rel, d in r["sha256"].items()})
    return record, digests


def assert_digested(digests: dict[str, str], *paths: Path) -> None:
    """Every file of ``paths`` (files or folders' weight / config files) is in ``digests`` with its own sha256."""
    for path in paths:
        path = Path(path).resolve()
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.suffix in (".safetensors", ".json")]
        assert files, path
        for f in files:
            assert digests[str(f)] == sha256_of(f), f
