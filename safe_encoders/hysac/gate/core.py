"""Installing a gate (`add_safety_gate`), its handle, its report, and scoring texts / images for it.

Which targets can be gated is decided by `safe_encoders.dispatch.HANDLERS`: the first handler that
matches the target and has an `install_gate` hook installs it. The built-in ones are diffusers
pipelines (`pipeline.install_pipeline_gate`) and LLaVA models (`llava.install_llava_gate`).
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from ...errors import UnsafeContentError, UnsupportedModelError
from ..classify import Verdicts, embed_texts, score_embeddings
from ..model import HySAC
from .blur import gaussian_blur
from .config import SafetyGate, finite_number
from .images import ImageBatch, clip_pixel_values

GATE_ATTRIBUTE = "_safe_encoders_gate"
Status = Literal["checked", "unchecked", "allowed unchecked", "not a target"]
IMAGE_ACTIONS = {"blur": "blurred", "black": "blacked out", "flag": "flagged", "block": "blocked"}


@dataclass
class InputCheck:
    """One input (or output) of a gated call: was it checked, its verdicts, and what the gate did.

    `status`: "checked"; "unchecked" (the gate cannot read it, or its policy is off); "allowed
    unchecked" (the gate cannot read it and `allow_unchecked` names it); "not a target" (it does not
    steer generation toward its content, e.g. `negative_prompt`). `action`: "passed", "blocked",
    "blanked", "redirected", "flagged", "blurred", "blacked out", "refused", "used" or "off".
    """

    name: str
    status: Status
    action: str
    verdicts: Verdicts | None = None
    note: str = ""


@dataclass
class GateReport:
    """What the gate saw and did in the last call.

    `inputs` lists every input of the call the gate knows about (prompts, negative prompts, image
    inputs, embeddings, callbacks) and the generated images (`output.<field>`). The summary fields:
    `prompts` / `prompt_action` (the text prompts; "unchecked" when none was checked) and `images` /
    `image_action` (the generated images, or a LLaVA tower's input). `opt_outs` are the
    `allow_unchecked` names this call used.
    """

    prompts: Verdicts | None = None
    prompt_action: str = "off"
    images: Verdicts | None = None
    image_action: str = "off"
    inputs: list[InputCheck] = field(default_factory=list)
    opt_outs: list[str] = field(default_factory=list)

    def add(self, check: InputCheck) -> InputCheck:
        self.inputs.append(check)
        if check.status == "allowed unchecked":
            self.opt_outs.append(check.name)
        return check

    def __getitem__(self, name: str) -> InputCheck:
        for check in self.inputs:
            if check.name == name:
                return check
        raise KeyError(f"the gate's report has no input {name!r}; it has {[c.name for c in self.inputs]}.")

    def summary(self) -> str:
        """One line per input: name, status, action, scores, note."""
        lines = []
        for check in self.inputs:
            scores = ""
            if check.verdicts is not None:
                scores = f" scores={[round(s, 4) for s in check.verdicts.scores.tolist()]}"
            note = f" ({check.note})" if check.note else ""
            lines.append(f"{check.name}: {check.status}, {check.action}{scores}{note}")
        return "\n".join(lines)


@dataclass(eq=False)
class GateHandle:
    """A gate installed on a target; `remove()` undoes it.

    Hooks that install a gate (`TargetHandler.install_gate`) read `gate`, `classifier` and the
    thresholds, register what undoes their changes with `on_remove`, and may keep per-target state
    in `state` (e.g. the diffusers wrapper's redirect encoders).
    """

    target: Any
    gate: SafetyGate
    classifier: HySAC
    handler: str
    text_threshold: float | None = None
    image_threshold: float | None = None
    last_report: GateReport | None = None
    calls: int = 0
    state: dict[str, Any] = field(default_factory=dict, repr=False)
    _undo: list[Callable[[], None]] = field(default_factory=list, repr=False)

    @property
    def active(self) -> bool:
        return getattr(self.target, GATE_ATTRIBUTE, None) is self

    def on_remove(self, undo: Callable[[], None]) -> None:
        """Register `undo` to run (last in, first out) when the gate is removed."""
        self._undo.append(undo)

    def require_threshold(self, modality: Literal["text", "image"]) -> float:
        """The threshold of `modality` (given, else from the classifier's bounds), stored on the handle."""
        name = f"{modality}_threshold"
        value = getattr(self, name)
        if value is None:
            value = _threshold(self.classifier, modality, getattr(self.gate, name))
            setattr(self, name, value)
        return value

    def new_report(self) -> GateReport:
        report = GateReport()
        self.last_report, self.calls = report, self.calls + 1
        return report

    def remove(self) -> None:
        """Undo the gate (idempotent)."""
        if not self.active:
            return
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()
        self.state.clear()
        with contextlib.suppress(AttributeError):
            object.__delattr__(self.target, GATE_ATTRIBUTE)


def add_safety_gate(target: Any, gate: SafetyGate) -> GateHandle:
    """Install `gate` on a diffusers text-to-image pipeline, a LLaVA model, or any target whose
    registered `TargetHandler` has an `install_gate` hook; returns the handle.

    Everything (classifier, its parameters, thresholds, redirect encoders) is prepared and checked
    before the target is touched. A target holds one gate at a time. Works before or after `make_safe`.
    """
    from ...dispatch import HANDLERS

    if getattr(target, GATE_ATTRIBUTE, None) is not None:
        raise ValueError(
            f"add_safety_gate: this {type(target).__name__} already has a safety gate; remove it first "
            "(handle.remove() or remove_safety_gate(target))."
        )
    handler = next((h for h in HANDLERS if h.install_gate is not None and h.matches(target)), None)
    if handler is None:
        gateable = [h.name for h in HANDLERS if h.install_gate is not None]
        raise UnsupportedModelError(
            f"add_safety_gate does not know how to gate a {type(target).__module__}.{type(target).__name__}. "
            f"Supported: {'; '.join(gateable) or 'nothing registered'} (register a TargetHandler with an "
            "install_gate hook to add a kind of target)."
        )
    classifier = gate.classifier if isinstance(gate.classifier, HySAC) else HySAC.from_pretrained(gate.classifier)
    check_classifier(classifier)
    handle = GateHandle(target=target, gate=gate, classifier=classifier.eval(), handler=handler.name)
    if gate.image_policy != "off":
        handle.require_threshold("image")
    assert handler.install_gate is not None
    try:
        handler.install_gate(handle)
    except BaseException:
        handle._undo.reverse()  # a hook that failed halfway: undo what it did
        for undo in handle._undo:
            undo()
        raise
    object.__setattr__(target, GATE_ATTRIBUTE, handle)
    return handle


def remove_safety_gate(target: Any) -> bool:
    """Remove the gate of `target`; False if it had none."""
    handle = getattr(target, GATE_ATTRIBUTE, None)
    if handle is None:
        return False
    handle.remove()
    return True


def check_classifier(classifier: HySAC) -> None:
    """Refuse a classifier whose curvature or scales are not finite (every score would be NaN)."""
    for name in ("log_curvature", "log_text_alpha", "log_image_alpha"):
        value = getattr(classifier, name)
        if not bool(torch.isfinite(value.detach()).all()):
            raise ValueError(f"SafetyGate: the classifier's {name} is {value.item()}, not a finite number.")
    curvature = classifier.curvature.detach()
    if not bool(torch.isfinite(curvature).all()) or float(curvature) <= 0:
        raise ValueError(f"SafetyGate: the classifier's curvature is {float(curvature)}; it must be finite and > 0.")


def _threshold(classifier: HySAC, modality: Literal["text", "image"], given: float | None) -> float:
    if given is not None:
        return finite_number(given, f"SafetyGate: {modality}_threshold")
    if classifier.bounds is None or not classifier.bounds.has_threshold(modality):
        raise ValueError(
            f"SafetyGate: no {modality}_threshold given and the classifier's bounds have none for {modality}. "
            f"Pass {modality}_threshold=... (see calibrate_threshold) or use a classifier with bounds."
        )
    return finite_number(classifier.bounds.threshold(modality), f"SafetyGate: the classifier's {modality} bound")


# ------------------------------------------------------------------------------ scoring


# A fast tokenizer keeps its padding / truncation settings as state between setting them and encoding: the
# gate's tokenizer calls (the classifier's, and the gated pipelines' tokenizers) take turns under this lock.
TOKENIZER_LOCK = threading.RLock()


def score_texts(handle: GateHandle, texts: list[str]) -> Verdicts:
    """Verdicts for `texts` at the text threshold (a non-finite score counts as unsafe).

    A text longer than the classifier's tokenizer reads (77 CLIP tokens; SD 3's T5 prompt takes 256) is
    also scored window by window; its score is the highest (fail closed: no tail goes unread).
    """
    with TOKENIZER_LOCK:
        return _score_texts(handle, texts)


def _score_texts(handle: GateHandle, texts: list[str]) -> Verdicts:
    classifier = handle.classifier
    windows, owners = [], []
    for index, text in enumerate(texts):
        for window in text_windows(classifier.tokenizer, text):
            windows.append(window)
            owners.append(index)
    threshold = handle.require_threshold("text")
    verdicts = score_embeddings(embed_texts(classifier, windows), classifier.curvature.detach(), threshold)
    if len(windows) == len(texts):
        return verdicts
    owner = torch.tensor(owners)
    scores = torch.stack([verdicts.scores[owner == i].nan_to_num(nan=math.inf).max() for i in range(len(texts))])
    return Verdicts(scores=scores, unsafe=(scores > threshold) | ~torch.isfinite(scores), threshold=threshold)


def text_windows(tokenizer: Any, text: str) -> list[str]:
    """`text` itself, then (when it is longer than `tokenizer` reads) its later windows of tokens as text."""
    limit = int(getattr(tokenizer, "model_max_length", 0) or 0) - 2  # room for the start / end tokens
    if not 0 < limit < 100_000:
        return [text]
    ids = tokenizer(text, add_special_tokens=False, truncation=False)["input_ids"]
    tails = [tokenizer.decode(ids[start : start + limit]) for start in range(limit, len(ids), limit)]
    return [text, *tails]


def score_images(handle: GateHandle, pixels: list[torch.Tensor]) -> Verdicts:
    """Verdicts for images ((3, H, W) in [0, 1]) at the image threshold (a non-finite score counts as unsafe)."""
    classifier = handle.classifier
    processor = classifier.image_processor
    with torch.no_grad():
        if processor is not None:
            arrays = [image.permute(1, 2, 0).numpy() for image in pixels]
            values = processor(images=arrays, do_rescale=False, return_tensors="pt")["pixel_values"]
        else:
            size = int(getattr(getattr(classifier.vision, "config", None), "image_size", 224))
            values = torch.cat([clip_pixel_values(image[None], size) for image in pixels])
        embeddings = classifier.encode_image(values.to(classifier.device))
    return score_embeddings(embeddings, classifier.curvature.detach(), handle.require_threshold("image"))


def nonfinite_note(verdicts: Verdicts) -> str:
    """Why items count as unsafe although their score is not above the threshold (NaN / Inf)."""
    bad = (~torch.isfinite(verdicts.scores)).nonzero().flatten().tolist()
    if not bad:
        return ""
    return f"item(s) {bad} scored {[verdicts.scores[i].item() for i in bad]}, not finite: counted as unsafe"


def apply_image_policy(
    handle: GateHandle,
    report: GateReport,
    name: str,
    batch: ImageBatch,
    consequence: str,
    *,
    policy: str | None = None,
) -> tuple[InputCheck, torch.Tensor]:
    """Score `batch`, record it in `report` as `name`, and apply the image policy (or `policy`) to the unsafe
    images (in `batch.pixels`, in place); raises `UnsafeContentError` under "block". Returns the entry and flags."""
    policy = policy or handle.gate.image_policy
    verdicts = score_images(handle, batch.pixels)
    flags = verdicts.unsafe
    action = IMAGE_ACTIONS[policy] if bool(flags.any()) else "passed"
    check = report.add(InputCheck(name, "checked", action, verdicts, nonfinite_note(verdicts)))
    if action == "passed":
        return check, flags
    unsafe = flags.nonzero().flatten().tolist()
    if policy == "block":
        raise UnsafeContentError(
            f"safety gate: {'generated' if name.startswith('output') else 'input'} image(s) {unsafe} of {name} are "
            f"unsafe (root distance "
            f"{[round(verdicts.scores[i].item(), 4) for i in unsafe]} > threshold {verdicts.threshold:.4f}"
            f"{'; ' + check.note if check.note else ''}); {consequence}.",
            report,
        )
    for i in unsafe:
        if policy == "blur":
            batch.pixels[i] = gaussian_blur(batch.pixels[i][None], handle.gate.blur_sigma)[0]
        elif policy == "black":
            batch.pixels[i] = torch.zeros_like(batch.pixels[i])
    return check, flags


def refuse_unchecked(report: GateReport, name: str, why: str) -> None:
    """Raise: `name` conditions generation, the gate cannot check it, and the gate is strict."""
    report.add(InputCheck(name, "unchecked", "refused", note=why))
    raise UnsafeContentError(
        f"safety gate: {name} was given, but {why}, so the gate cannot check it and the call was refused. "
        f"Pass {_prompt_hint(name)}, or opt out explicitly with SafetyGate(..., allow_unchecked=({name!r},)) "
        "(recorded in the gate's report).",
        report,
    )


def _prompt_hint(name: str) -> str:
    if name.endswith("prompt_embeds"):
        return "the prompt text instead"
    if "image" in name:
        return "the image itself with an image_policy other than 'off'"
    return "inputs the gate can read"


def allow_unchecked(report: GateReport, name: str, why: str) -> None:
    report.add(InputCheck(name, "allowed unchecked", "used", note=f"{why}; allowed by allow_unchecked"))
