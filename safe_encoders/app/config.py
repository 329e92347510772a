"""What the app serves: the models' sources, where, and on which device; validated when made."""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from ..errors import SafeEncodersError

# A prompt longer than this is refused in the page (CLIP reads 77 tokens; the gate scores longer ones window
# by window, so a huge paste would only cost time).
MAX_PROMPT_CHARS = 2000
# Items one Moderate request may hold, and results one search may ask for.
MAX_ITEMS = 64
MAX_RESULTS = 50
DEMO_FOLDER = "out/demo"


class AppError(SafeEncodersError, ValueError):
    """The app cannot start as asked (a missing demo folder, a bad option), or a request is refused."""


@dataclass(frozen=True)
class DemoLayout:
    """Where the offline demo (`python -m train demo --out FOLDER`) writes what the app reads.

    `train/demo.py` writes with these names, so the two cannot drift apart.
    """

    root: Path

    @property
    def pretrained(self) -> Path:
        """The pre-trained tiny CLIP (a transformers `CLIPModel` folder)."""
        return self.root / "pretrained"

    @property
    def safe_clip(self) -> Path:
        """The Safe-CLIP text encoder in our format."""
        return self.root / "exported" / "text_encoder.safetensors"

    @property
    def hysac(self) -> Path:
        """The HySAC export (`HySAC.save_pretrained`)."""
        return self.root / "hysac_export"

    @property
    def pipeline(self) -> Path:
        """The tiny Stable Diffusion pipeline on the pre-trained text encoder, before `make_safe`."""
        return self.root / "sd_pipeline"

    @property
    def images(self) -> Path:
        """Synthetic images of the demo's test world (safe/ and unsafe/), for the Search tab."""
        return self.root / "images"

    def scan(self) -> Path:
        """Where the app scans `images` with the demo's HySAC; one folder per HySAC export (a new demo run
        makes a new scan instead of meeting a scan of another model)."""
        digest = hashlib.sha256((self.hysac / "hysac_config.json").read_bytes()).hexdigest()[:12]
        return self.root / f"app_scan-{digest}"

    def check(self) -> None:
        """Refuse with what to run when something the app needs is missing."""
        needed = {
            "Safe-CLIP export": self.safe_clip,
            "HySAC export": self.hysac / "hysac_config.json",
            "tiny SD pipeline": self.pipeline / "model_index.json",
            "synthetic images": self.images,
        }
        missing = [f"{name} ({path})" for name, path in needed.items() if not path.exists()]
        if missing:
            raise AppError(
                f"--demo: {self.root} lacks {'; '.join(missing)}. Run the offline demo first: bash scripts/dev.sh "
                f"demo (it writes {self.root}; a demo folder from before the app existed needs a new run)."
            )


@dataclass(frozen=True)
class AppConfig:
    """What to load and where to serve it.

    Args:
        model: a diffusers pipeline (Hub id or folder) for the Generate tab; None leaves the tab out.
        checkpoint: the Safe-CLIP checkpoint for `make_safe` and the gate's "redirect" ("auto", a registry
            name, a Hub id, a folder or one of our files).
        hysac: the HySAC model (registry name, Hub id or folder).
        scan: a folder written by `safe-encoders scan --embeddings` for the Search tab (None: none yet).
        scan_images: a folder of images to scan into `scan` first when it holds no scan (the demo's).
        device: torch device ("cuda" when present, else "cpu", by default).
        steps: denoising steps per image.
        host, port: where to serve (loopback by default); port 0 picks a free one.
        label: how the footer names this set-up (e.g. "demo").
    """

    model: str | None = None
    checkpoint: str = "auto"
    hysac: str = "hysac"
    scan: str | None = None
    scan_images: str | None = None
    device: str | None = None
    steps: int = 25
    host: str = "127.0.0.1"
    port: int = 7860
    label: str = ""

    def __post_init__(self) -> None:
        if not 1 <= self.steps <= 200:
            raise AppError(f"steps must be in [1, 200], got {self.steps}.")
        if not 0 <= self.port <= 65535:
            raise AppError(f"port must be in [0, 65535], got {self.port}.")

    @property
    def loopback(self) -> bool:
        """Served on this machine only: then the page may name other folders on it (the scan folder)."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    @classmethod
    def for_demo(cls, folder: str | Path = DEMO_FOLDER, **overrides: object) -> AppConfig:
        """The offline demo's models (see `DemoLayout`); refuses, naming the command to run, when absent."""
        layout = DemoLayout(Path(folder))
        layout.check()
        settings: dict[str, object] = dict(
            model=str(layout.pipeline), checkpoint=str(layout.safe_clip), hysac=str(layout.hysac),
            scan=str(layout.scan()), scan_images=str(layout.images), device="cpu", steps=4, label="demo",
        )  # fmt: skip
        settings.update(overrides)
        return cls(**settings)  # type: ignore[arg-type]
