"""The Search tab: query a scan made with `--embeddings` by text or image, with keep / redirect / filter;
the nearest items as a gallery (images of a scanned folder) and a table, with distances and verdicts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..moderation.search import SAFETY_MODES
from .config import MAX_PROMPT_CHARS, MAX_RESULTS, AppError
from .models import AppModels

COLUMNS = ["rank", "id", "modality", "distance", "verdict"]


@dataclass(frozen=True)
class Result:
    """One hit: the library's `Hit` fields, and the item's image when the scan's input is a folder of them."""

    rank: int
    id: str
    modality: str
    distance: float
    unsafe: bool
    image: Any = None

    @property
    def caption(self) -> str:
        return f"{self.rank}. {self.id}  d={self.distance:.4f}  {'UNSAFE' if self.unsafe else 'safe'}"

    def row(self) -> list[Any]:
        return [self.rank, self.id, self.modality, f"{self.distance:.4f}", "UNSAFE" if self.unsafe else "safe"]


def run_search(
    models: AppModels, folder: str | None, text: str | None, image: str | None, safety: str, k: Any
) -> list[Result]:
    """The `k` nearest items of the scan in `folder` to the text or the image (exactly one of them)."""
    from ..moderation.collection import load_image
    from ..moderation.search import search

    folder = (folder or "").strip() or models.scan_folder
    if not folder:
        raise AppError("No scan is loaded: start the app with --scan FOLDER, or type a scan folder.")
    if folder != models.scan_folder and not models.config.loopback:
        raise AppError("This server is reachable from other machines: it only searches the scan it was started with.")
    text = (text or "").strip()
    if bool(text) == bool(image):
        raise AppError("Give a text or an image to search with (one of them).")
    if len(text) > MAX_PROMPT_CHARS:
        raise AppError(f"The query has {len(text):,} characters; the limit is {MAX_PROMPT_CHARS:,}.")
    if safety not in SAFETY_MODES:
        raise AppError(f"Unknown safety mode {safety!r}; choose one of {', '.join(SAFETY_MODES)}.")
    try:
        k = int(k)
    except (TypeError, ValueError):
        raise AppError(f"The number of results must be a whole number, got {k!r}.") from None
    if not 1 <= k <= MAX_RESULTS:
        raise AppError(f"The number of results must be in [1, {MAX_RESULTS}], got {k}.")
    with models.lock:
        index = models.index(folder)
        if text:
            hits = search(models.hysac, index, texts=[text], k=k, safety=safety)[0]
        else:
            try:
                query = load_image(image)
            except Exception as error:  # an unreadable upload: said in the page (without the server's upload folder)
                reason = str(error).replace(str(image), Path(str(image)).name)
                raise AppError(f"The query image cannot be read ({type(error).__name__}: {reason}).") from None
            hits = search(models.hysac, index, images=[query], k=k, safety=safety)[0]
    root = image_root(folder)
    results = []
    for rank, hit in enumerate(hits, 1):
        picture = None
        path = root / hit.id if root is not None else None
        # ids are paths under the scanned folder; one that leads out of it is listed, not opened
        if path is not None and hit.modality == "image" and path.resolve().is_relative_to(root.resolve()):
            try:
                picture = load_image(path)
            except Exception:  # the collection changed since the scan: the table still lists the hit
                picture = None
        results.append(Result(rank, hit.id, hit.modality, hit.distance, hit.unsafe, picture))
    return results


def image_root(folder: str) -> Path | None:
    """The scanned image folder when the scan's input was one (its ids are paths under it), else None."""
    from ..moderation.scan import ScanOutput

    manifest = ScanOutput(folder).manifest() or {}
    spec = manifest.get("input") or {}
    source = spec.get("source")
    if source and (spec.get("kind") == "folder" or (spec.get("kind") is None and Path(source).is_dir())):
        return Path(source)
    return None


# ------------------------------------------------------------------------------------------------- page


def build_tab(models: AppModels) -> None:
    """The tab's components and events (inside the caller's `gr.Blocks` / `gr.Tab`)."""
    import gradio as gr

    from .server import error_text, ok_text

    folder = gr.Textbox(label="Scan folder (safe-encoders scan ... --embeddings)", value=models.scan_folder or "",
                        interactive=models.config.loopback, elem_id="search-folder")  # fmt: skip
    with gr.Row():
        text = gr.Textbox(label="Query text", lines=1, elem_id="search-text", scale=3)
        # a file, not gr.Image: an unreadable upload then reaches run_search, which says so in the page
        image = gr.File(label="or query image", type="filepath", file_types=["image"], elem_id="search-image",
                        height=160, scale=1)  # fmt: skip
    with gr.Row():
        safety = gr.Radio(list(SAFETY_MODES), value="keep", label="Safety", elem_id="search-safety",
                          info="; ".join(f"{m.name}: {m.help}" for m in SAFETY_MODES.values()))  # fmt: skip
        k = gr.Slider(1, MAX_RESULTS, value=8, step=1, label="Results", elem_id="search-k")
        button = gr.Button("Search", variant="primary", elem_id="search-run")
    status = gr.Markdown(elem_id="search-status")
    gallery = gr.Gallery(label="Nearest items", columns=8, height=260, format="png", elem_id="search-gallery",
                         elem_classes="pixels")  # fmt: skip
    table = gr.Dataframe(headers=COLUMNS, label="Hits", interactive=False, elem_id="search-table")

    def run(folder_: str, text_: str, image_: str | None, safety_: str, k_: Any, progress=gr.Progress()) -> list:  # noqa: B008
        progress(0.0, desc="searching (the first search of a scan builds its index)")
        try:
            results = run_search(models, folder_, text_, image_, safety_, k_)
        except Exception as error:  # shown in the page; the server carries on
            return [error_text(error), gr.update(), gr.update()]
        unsafe = sum(r.unsafe for r in results)
        pictures = [(r.image, r.caption) for r in results if r.image is not None]
        summary = f"{len(results)} nearest items ({unsafe} flagged unsafe by the scan), safety: {safety_}"
        return [ok_text(summary), pictures, [r.row() for r in results]]

    button.click(run, [folder, text, image, safety, k], [status, gallery, table], api_name="search")
