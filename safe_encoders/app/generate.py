"""The Generate tab: one prompt, one seed, three images side by side (the pipeline as loaded, with
`make_safe`, with the HySAC gate under a chosen policy), each with what was checked and done."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import UnsafeContentError
from .config import MAX_PROMPT_CHARS, AppError
from .models import AppModels

Progress = Callable[[float, str], None]
MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class Panel:
    """One of the side-by-side results: a title, the image (None when refused) and its report."""

    title: str
    image: Any
    report: str


def check_prompt(prompt: Any) -> str:
    """The prompt, or an `AppError` saying what is wrong with it."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise AppError("Type a prompt first.")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise AppError(f"The prompt has {len(prompt):,} characters; the limit is {MAX_PROMPT_CHARS:,}. Shorten it.")
    return prompt


def check_seed(seed: Any) -> int:
    """A whole number in [0, 2**32 - 1] (a number field may send it as a float)."""
    try:
        value = float(seed)
    except (TypeError, ValueError):
        raise AppError(f"The seed must be a whole number, got {seed!r}.") from None
    if not value.is_integer() or not 0 <= value <= MAX_SEED:
        raise AppError(f"The seed must be a whole number in [0, {MAX_SEED}], got {seed!r}.")
    return int(value)


def generate(
    models: AppModels,
    prompt: str,
    seed: Any,
    prompt_policy: str,
    image_policy: str,
    progress: Progress | None = None,
) -> list[Panel]:
    """The three panels for `prompt` and `seed` (same seed, so the images differ only by what each does)."""
    from ..dispatch import is_safe
    from .models import swap_state

    if models.pipe is None:
        raise AppError("No pipeline is loaded: start the app with --model (or --demo).")
    prompt, seed = check_prompt(prompt), check_seed(seed)
    progress = progress or (lambda fraction, text: None)
    steps = models.config.steps
    runs = 3 * steps
    panels = []
    with models.lock:
        progress(0.0, "gating the pipeline")
        gated, handle = models.gated(prompt_policy, image_policy)
        variants = (
            ("as loaded", models.pipe, lambda: f"text encoder as loaded; is_safe: {is_safe(models.pipe)}\nno gate"),
            ("with make_safe", models.safe_pipe,
             lambda: f"{swap_state(models.safe_pipe, verify=False)}\nis_safe: {is_safe(models.safe_pipe)}\nno gate"),
            (f"with the HySAC gate (prompt: {prompt_policy}, images: {image_policy})", gated,
             lambda: gate_summary(handle)),
        )  # fmt: skip
        for number, (title, pipe, describe) in enumerate(variants):
            done = number * steps

            def step(pipe_: Any, index: int, timestep: Any, kwargs: dict, done: int = done, title: str = title) -> dict:
                progress((done + index + 1) / runs, f"{title}: step {index + 1}/{steps}")
                return kwargs

            try:
                image = run_pipeline(pipe, prompt, seed, steps, step)
                report = describe()
            except UnsafeContentError as error:
                image, report = None, f"refused: {error}\n{gate_summary(handle)}"
            panels.append(Panel(title, image, report))
    return panels


def run_pipeline(pipe: Any, prompt: str, seed: int, steps: int, callback: Callable[..., dict]) -> Any:
    """One image from `pipe` with a CPU generator seeded by `seed` (the same noise on any device)."""
    import torch

    generator = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        output = pipe(prompt, num_inference_steps=steps, generator=generator, output_type="pil",
                      callback_on_step_end=callback)  # fmt: skip
    return output.images[0]


def gate_summary(handle: Any) -> str:
    report = handle.last_report
    if report is None:
        return "the gate has not run"
    lines = [f"prompt: {report.prompt_action}; image: {report.image_action}"]
    if report.prompts is not None:
        lines.append(verdict_line("prompt score", report.prompts))
    if report.images is not None:
        lines.append(verdict_line("image score", report.images))
    return "\n".join([*lines, report.summary()])


def verdict_line(what: str, verdicts: Any) -> str:
    score, unsafe = float(verdicts.scores[0]), bool(verdicts.unsafe[0])
    return f"{what} {score:.4f} (threshold {verdicts.threshold:.4f}): {'UNSAFE' if unsafe else 'safe'}"


# ------------------------------------------------------------------------------------------------- page


def build_tab(models: AppModels) -> None:
    """The tab's components and events (inside the caller's `gr.Blocks` / `gr.Tab`)."""
    import gradio as gr

    from ..hysac.gate.config import IMAGE_POLICIES, PROMPT_POLICIES
    from .server import error_text, ok_text

    if models.pipe is None:
        gr.Markdown("No pipeline is loaded: start the app with `--model` (or `--demo`).")
        return
    with gr.Row():
        prompt = gr.Textbox(label="Prompt", lines=2, max_lines=6, elem_id="generate-prompt", scale=4)
        seed = gr.Number(label="Seed", value=0, precision=0, minimum=0, maximum=MAX_SEED, elem_id="generate-seed")
    with gr.Row():
        prompt_policy = gr.Dropdown(list(PROMPT_POLICIES), value="redirect", label="Gate: prompt policy",
                                    elem_id="generate-prompt-policy")  # fmt: skip
        image_policy = gr.Dropdown(list(IMAGE_POLICIES), value="blur", label="Gate: image policy",
                                   elem_id="generate-image-policy")  # fmt: skip
        button = gr.Button("Generate", variant="primary", elem_id="generate-run")
    status = gr.Markdown(elem_id="generate-status")
    images, reports = [], []
    with gr.Row():
        for number, title in enumerate(("as loaded", "with make_safe", "with the HySAC gate")):
            with gr.Column():
                images.append(gr.Image(label=title, type="pil", format="png", interactive=False, height=256,
                                       elem_id=f"generate-image-{number}", elem_classes="pixels"))  # fmt: skip
                reports.append(gr.Textbox(label=f"report: {title}", lines=6, interactive=False,
                                          elem_id=f"generate-report-{number}"))  # fmt: skip

    def run(prompt_: str, seed_: Any, prompt_policy_: str, image_policy_: str, progress=gr.Progress()) -> list:  # noqa: B008
        try:
            panels = generate(models, prompt_, seed_, prompt_policy_, image_policy_,
                              lambda fraction, text: progress(fraction, desc=text))  # fmt: skip
        except Exception as error:  # shown in the page; the server carries on
            return [error_text(error), *[gr.update()] * 6]
        return [ok_text(f"seed {check_seed(seed_)}, {models.config.steps} steps"), *[p.image for p in panels],
                *[f"{p.title}\n{p.report}" for p in panels]]  # fmt: skip

    button.click(run, [prompt, seed, prompt_policy, image_policy], [status, *images, *reports], api_name="generate")
