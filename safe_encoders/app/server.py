"""The page: three tabs and a footer saying what is loaded; `serve` loads the models and serves it.

Gradio is imported here, lazily (`pip install 'safe-encoders[app]'`). Every event handler catches what
goes wrong and shows it in the page: a bad request never stops the server.
"""

from __future__ import annotations

import html
import os
from typing import Any

from ..extras import require
from .config import AppConfig
from .models import AppModels, Say, footer_rows, load_models

MAX_UPLOAD = "25mb"  # per uploaded file
TITLE = "safe-encoders: Safe-CLIP and HySAC at work"
# The page works offline: no web fonts, no analytics.
FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]
MONO_FONTS = ["ui-monospace", "monospace"]
# The demo's images are 16-32 px: show them large, pixel for pixel.
CSS = """
.pixels img { width: 100% !important; height: 100% !important; object-fit: contain; image-rendering: pixelated; }
"""


def gradio() -> Any:
    """Gradio, without its usage analytics (the app works offline), or an error naming the extra."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    return require("gradio", "app", feature="safe-encoders app")


def error_text(error: BaseException) -> str:
    """What a failed request shows in its tab's status line."""
    message = " ".join(str(error).split()) or type(error).__name__
    return f"**Error:** {html.escape(message)}"


def ok_text(message: str) -> str:
    return html.escape(message)


def footer_markdown(models: AppModels, *, verify: bool = True) -> str:
    """The footer: one line per thing loaded, with the swap verified against the live weights."""
    try:
        rows = footer_rows(models, verify=verify)
    except Exception as error:  # the footer never takes the page down; it says it could not check
        return f"**Loaded:** could not describe what is loaded ({html.escape(str(error))})"
    lines = [f"- **{html.escape(what)}**: {html.escape(state)}" for what, state in rows]
    return "\n".join(["**Loaded**", *lines])


def build_app(models: AppModels) -> Any:
    """The `gr.Blocks` page over `models` (not launched)."""
    gr = gradio()
    from . import generate, moderate, search

    with gr.Blocks(title=TITLE, analytics_enabled=False) as app:
        gr.Markdown(f"## {TITLE}")
        with gr.Tabs():
            with gr.Tab("Generate", id="generate", elem_id="tab-generate"):
                generate.build_tab(models)
            with gr.Tab("Moderate", id="moderate", elem_id="tab-moderate"):
                moderate.build_tab(models)
            with gr.Tab("Search", id="search", elem_id="tab-search"):
                search.build_tab(models)
        with gr.Row():
            footer = gr.Markdown(footer_markdown(models), elem_id="app-footer")
            verify = gr.Button("Verify again", size="sm", elem_id="app-verify", scale=0)
        verify.click(lambda: footer_markdown(models), None, footer, api_name="verify")
    return app


def launch(app: Any, config: AppConfig, *, block: bool = True) -> Any:
    """Serve `app` on `config.host:config.port` (one model job at a time: the models are shared)."""
    gr = gradio()
    theme = gr.themes.Default(font=FONTS, font_mono=MONO_FONTS)
    app.queue(default_concurrency_limit=1)
    return app.launch(
        server_name=config.host,
        server_port=config.port or None,
        share=False,
        inbrowser=False,
        show_error=True,
        max_file_size=MAX_UPLOAD,
        quiet=not block,
        prevent_thread_lock=not block,
        theme=theme,
        css=CSS,
        ssr_mode=False,  # server-side rendering would need Node
    )


def serve(config: AppConfig, say: Say | None = None, *, block: bool = True) -> tuple[Any, AppModels]:
    """Load the models, build the page and serve it; returns (app, models) (with `block=False`, at once)."""
    gradio()  # fail before loading models when the extra is missing
    models = load_models(config, say)
    app = build_app(models)
    launch(app, config, block=block)
    return app, models
