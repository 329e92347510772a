"""A HySAC safety gate for diffusers text-to-image pipelines and LLaVA models. It fails closed.

`add_safety_gate(target, SafetyGate(classifier=hysac, ...))` returns a `GateHandle`; `handle.remove()`
(or `remove_safety_gate(target)`) undoes everything it did. `handle.last_report` lists every input of
the last call: whether it was checked, its scores, and the action taken (`report.summary()`).

What is checked (diffusers pipelines: a subclass of the pipeline's class, same name and signature, plus
hooks where the work happens, `components.py`: the text encoders' token ids before they run, the VAE
decoder's images after it; so class-level calls, rebuilt pipelines, `from_pipe` and SEGA's editing
prompts are checked by construction). Every argument of `__call__` has a role (`roles.py`); one
without a role is refused under "block" / "redirect" (at install when the signature takes it).

- Text prompts: `prompt`, `prompt_2`, `prompt_3` (every text encoder's prompt) and SEGA's
  `editing_prompt`, scored with HySAC's text side (a prompt longer than the classifier reads, e.g.
  SD 3's 256-token T5 prompt, is also scored window by window and takes its highest score);
  `prompt_policy` applies to a row when any of them is unsafe:
  "block" raises `UnsafeContentError` (`on_block="raise"`) or (`on_block="blank"`) generates "" for
  those rows and blacks their images out; "redirect" takes the Safe-CLIP text encoder(s)' output for
  the whole call (the pipeline's own when `is_safe(pipe)`, else copies made safe with
  `redirect_checkpoint` when the gate is added), decided per call in a context variable (the pipeline
  is never changed, so concurrent calls are safe) and refused when that encoder no longer verifies
  as Safe-CLIP; calls with only safe prompts keep the original encoder; "flag" only reports; "off"
  does not check.
- Text encoders, whoever calls them: the token ids they receive are decoded and scored (rows the
  call already checked are skipped); tokens the classifier cannot read (textual inversion) are
  refused under "block" / "redirect" (opt-out "unreadable_tokens").
- Input images: `image` (img2img / inpaint / ControlNet), `ip_adapter_image`, `control_image`, read
  as diffusers' image processor reads them (RGBA / 4-channel inputs that img2img uses as latents,
  integer arrays and out-of-range values are refused), scored with HySAC's image side;
  `image_policy` applies to what the pipeline will see: "block"
  raises before generation, "blur" / "black" change the image passed on, "flag" reports.
- Generated images, whatever `output_type` and `return_dict`: every image field of the output
  (`images`, and e.g. `unsafe_images` of `StableDiffusionPipelineSafe`) is scored and
  `image_policy` applied ("blur", "black", "flag", "block" = raise). Flags are OR-ed into
  `nsfw_content_detected` (or the tuple's second item). `output_type="latent"`: the latents are
  decoded with the pipeline's VAE and checked; safe latents are returned unchanged, unsafe ones are
  flagged ("flag") or refused ("block", and also "blur" / "black": latents cannot be blurred
  faithfully, so they are withheld rather than passed on).
- `callback_on_step_end`: wrapped; its return value is copied to a plain dict (what the pipeline
  reads) and the call is stopped if it changes any tensor but the latents (e.g. new `prompt_embeds`).
- A score that is not finite (NaN / Inf) counts as unsafe; the report says so.

What is refused (under `prompt_policy` "block" and "redirect", unless opted out)

- Inputs the gate cannot read: `prompt_embeds`, `negative_prompt_embeds`, `pooled_prompt_embeds`,
  `ip_adapter_image_embeds`, any other `*_embeds` / `*_embeddings` / `*_latents` argument, attention
  masks, an image input given as latents, image inputs while `image_policy="off"`, tokens the
  classifier cannot read, an argument with no role: `UnsafeContentError` naming the input and the
  opt-out.
- `output_type="latent"` that cannot be decoded (no VAE, packed latents) while an image policy is on.
- LLaVA: `inputs_embeds` given by the caller while an image policy is on, and (transformers 5)
  `mm_encoder_outputs` the gated tower did not compute.
- At construction / load: thresholds, `blur_sigma`, `input_mean` / `input_std` that are not finite
  numbers in range; a classifier whose curvature / scales or bounds are not finite.

How to opt out: `SafetyGate(..., allow_unchecked=("prompt_embeds", "pooled_prompt_embeds"))` (also
"ip_adapter_image_embeds", "callback_on_step_end", "image", "ip_adapter_image", "output_latents",
"inputs_embeds", "mm_encoder_outputs"); each use is recorded in `report.opt_outs` and the input's entry. With
`prompt_policy` "flag" or "off" nothing is refused; unreadable inputs are recorded as "unchecked".

What stays out of reach is listed in one place: README.md, section "HySAC: detect and steer instead
of erase", after the gate table.

Not a generation target: `negative_prompt*` (negative prompts steer away from
their content; they are listed in the report, not scored), `mask_image`, `latents` (the starting
noise). The image policy is the backstop for what they (or anything else) make the pipeline draw.

diffusers' own `safety_checker` keeps running beside the gate unless `replace_safety_checker=True`,
which removes it while the gate is on.

LLaVA models: a forward pre-hook on each CLIP vision tower scores the images the tower is about to
see (for LLaVA-Next: every tile) and applies `image_policy` before the model answers.

Other targets: a `safe_encoders.dispatch.TargetHandler` registered with an `install_gate` hook (for
instance `install_pipeline_gate` for a pipeline-like object) makes `add_safety_gate` work on it.
"""

from ...errors import UnsafeContentError
from .blur import gaussian_blur
from .config import CLIP_MEAN, CLIP_STD, ImagePolicy, PromptPolicy, SafetyGate
from .core import GateHandle, GateReport, InputCheck, add_safety_gate, remove_safety_gate
from .images import clip_pixel_values
from .llava import install_llava_gate
from .pipeline import install_pipeline_gate
from .pipeline_outputs import decode_latents

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "GateHandle",
    "GateReport",
    "ImagePolicy",
    "InputCheck",
    "PromptPolicy",
    "SafetyGate",
    "UnsafeContentError",
    "add_safety_gate",
    "clip_pixel_values",
    "decode_latents",
    "gaussian_blur",
    "install_llava_gate",
    "install_pipeline_gate",
    "remove_safety_gate",
]
