"""`safe-encoders app`: a web page (Gradio) to see Safe-CLIP and HySAC at work.

Tabs: Generate (the pipeline as loaded / with `make_safe` / with the HySAC gate, side by side),
Moderate (HySAC's score, threshold and verdict per text or image, against the model's bounds),
Search (a scan made with `--embeddings`, by text or image, with keep / redirect / filter); a footer
says what is loaded and whether the swap still verifies.

from safe_encoders.app import AppConfig, load_models
models = load_models(AppConfig.for_demo("out/demo"))    # what the offline demo wrote
from safe_encoders.app.server import build_app          # imports gradio (pip install 'safe-encoders[app]')
build_app(models).launch(server_name="127.0.0.1")

Only `server.py` and the tabs' `build_tab` functions import gradio, and only when called: the rest of
the package works without the `[app]` extra.
"""

from .config import AppConfig, AppError, DemoLayout
from .models import AppModels, load_models

__all__ = ["AppConfig", "AppError", "AppModels", "DemoLayout", "load_models"]
