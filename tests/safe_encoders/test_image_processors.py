"""Every CLIP image processor we build is the class that needs no torchvision: transformers 5 otherwise warns
"CLIPImageProcessor requires torchvision (not installed); falling back ..." once per process, a warning the user
cannot act on. Checked in a fresh process (the warning is emitted once per process and then cached)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import sys
from eval.data.synthetic import build_image_processor
from safe_encoders.image_processors import clip_image_processor_class

processor = build_image_processor(32)
processor.save_pretrained(sys.argv[1])
again = clip_image_processor_class().from_pretrained(sys.argv[1])
import numpy as np
pixels = again(images=[np.zeros((32, 32, 3), dtype=np.uint8)], return_tensors="pt")["pixel_values"]
from safe_encoders.diffusers.sld import sld_classes  # make_safe looks for SLD; its module names CLIPImageProcessor

sld_classes()
print(type(again).__name__, tuple(pixels.shape))
"""


def test_building_and_loading_clip_image_processors_prints_no_torchvision_warning(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("(1, 3, 32, 32)")
    assert "torchvision" not in done.stderr, done.stderr
