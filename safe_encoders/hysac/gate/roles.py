"""The role of every argument of a diffusers pipeline's `__call__` (an allow-list: no role, no pass).

- "text": a prompt that steers generation toward its content; scored with HySAC's text side.
- "concept": text that applies to every row of the batch (SEGA's `editing_prompt`); scored like a prompt.
- "image": an input image; scored with HySAC's image side as the pipeline will read it.
- "embeddings": tensors the gate cannot read (embeddings, latents given to condition, attention masks
  that only mean something with embeddings, guidance vectors); refused under a strict policy.
- "callback": `callback_on_step_end`; wrapped so that it may change the latents only.
- "options": keyword dictionaries for attention processors (`cross_attention_kwargs`, ...): harmless
  when they hold only numbers / strings / booleans; a tensor inside is refused like embeddings.
- "not a target": inputs that do not steer generation toward their content (negative prompts, the
  inpainting mask, the starting noise); listed in the report, not scored.
- "harmless": numbers, sizes, schedules, generators, output format: they cannot carry content.

Only exact names have roles, except that any `*_embeds` / `*_embeddings` / `*_latents` name is
"embeddings" (a refusal, so a pattern fails closed). A name with no role is refused under a strict
policy: `add_safety_gate` refuses a pipeline whose `__call__` takes one (naming it and the opt-out),
and a call that passes one through `**kwargs` is refused.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable

TEXT = frozenset({"prompt", "prompt_2", "prompt_3"})
CONCEPT = frozenset({"editing_prompt"})
IMAGE = frozenset({"image", "ip_adapter_image", "control_image"})
CALLBACK = frozenset({"callback_on_step_end"})
OPTIONS = frozenset({"cross_attention_kwargs", "attention_kwargs", "joint_attention_kwargs"})
NOT_TARGET = frozenset(
    {"negative_prompt", "negative_prompt_2", "negative_prompt_3", "negative_ip_adapter_image", "mask_image", "latents"}
)
EMBEDDINGS = frozenset(
    {
        "prompt_attention_mask",
        "negative_prompt_attention_mask",
        "sem_guidance",  # SEGA: pre-computed guidance vectors
        "image_embeds",
        "negative_image_embeds",
    }
)
EMBEDDING_SUFFIXES = ("_embeds", "_embeddings", "_latents")
HARMLESS = frozenset(
    {
        # sampling and output
        "num_inference_steps", "timesteps", "sigmas", "guidance_scale", "guidance_rescale", "eta", "generator",
        "output_type", "return_dict", "num_images_per_prompt", "height", "width", "strength", "denoising_start",
        "denoising_end", "clip_skip", "max_sequence_length", "callback_on_step_end_tensor_inputs", "mu",
        "true_cfg_scale", "padding_mask_crop", "use_resolution_binning", "clean_caption",
        # the legacy callback: diffusers passes it the latents only and ignores what it returns
        "callback", "callback_steps",
        # SDXL micro-conditioning (sizes, crop coordinates, aesthetic scores)
        "original_size", "target_size", "crops_coords_top_left", "negative_original_size", "negative_target_size",
        "negative_crops_coords_top_left", "aesthetic_score", "negative_aesthetic_score",
        # ControlNet / PAG scales and schedules
        "controlnet_conditioning_scale", "control_guidance_start", "control_guidance_end", "guess_mode",
        "pag_scale", "pag_adaptive_scale",
        # Safe Latent Diffusion (StableDiffusionPipelineSafe): strengths of the guidance away from its concept
        "sld_guidance_scale", "sld_warmup_steps", "sld_threshold", "sld_momentum_scale", "sld_mom_beta",
        # SEGA (SemanticStableDiffusionPipeline): strengths and schedules of its editing prompts
        "reverse_editing_direction", "edit_guidance_scale", "edit_warmup_steps", "edit_cooldown_steps",
        "edit_threshold", "edit_momentum_scale", "edit_mom_beta", "edit_weights",
        # SD 3 skip-layer guidance: layer indices and scales
        "skip_guidance_layers", "skip_layer_guidance_scale", "skip_layer_guidance_start", "skip_layer_guidance_stop",
    }
)  # fmt: skip
CATCH_ALL_KINDS = (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)


def role_of(name: str) -> str | None:
    """The role of a pipeline argument (see the module docstring), or None when it has none."""
    for role, names in (
        ("text", TEXT),
        ("concept", CONCEPT),
        ("image", IMAGE),
        ("callback", CALLBACK),
        ("options", OPTIONS),
        ("not a target", NOT_TARGET),
        ("embeddings", EMBEDDINGS),
        ("harmless", HARMLESS),
    ):
        if name in names:
            return role
    if name.endswith(EMBEDDING_SUFFIXES):
        return "embeddings"
    return None


def unknown_arguments(signature: inspect.Signature, allowed: Iterable[str] = ()) -> list[str]:
    """The named parameters of a pipeline's `__call__` that have no role and are not in `allowed`."""
    allowed = set(allowed)
    return [
        name
        for name, parameter in signature.parameters.items()
        if name != "self" and parameter.kind not in CATCH_ALL_KINDS and role_of(name) is None and name not in allowed
    ]


def unknown_arguments_message(pipeline: str, unknown: list[str]) -> str:
    return (
        f"add_safety_gate: {pipeline}.__call__ takes {unknown}, which the gate has no role for (it cannot tell "
        "whether they carry content), so under prompt_policy 'block' / 'redirect' it refuses to gate this "
        f"pipeline. If you never pass them, or they are harmless, opt out with SafetyGate(..., "
        f"allow_unchecked={tuple(unknown)!r}) (each use is recorded in the gate's report)."
    )
