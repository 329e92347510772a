"""The ``llava_hf_safe`` model classes: lmms-eval's ``llava_hf`` (simple and chat) with the Safe-CLIP tower.

Only ``__init__`` is added: lmms-eval's constructor loads the checkpoint, then (``safe=true``)
:func:`safe_encoders.make_safe` replaces the vision tower's weights where lmms-eval's model reads them (after any
``accelerate`` wrapping: the swap keeps the same ``Parameter`` objects, writing into them or pointing them at the
checked checkpoint's private memory map). Generation, chat templates and
batching are lmms-eval's, inherited unchanged. Fail closed: a safe run whose model does not report safe afterwards,
and a stock run whose tower already carries a Safe-CLIP swap record, both refuse to evaluate.
"""

from __future__ import annotations

from typing import Any

from safe_encoders.errors import SafeEncodersError
from safe_encoders.extras import require

_simple = require("lmms_eval.models.simple.llava_hf", "vlm-bench", feature="the llava_hf_safe lmms-eval model")
_chat = require("lmms_eval.models.chat.llava_hf", "vlm-bench", feature="the llava_hf_safe lmms-eval model")


class SafeTowerError(SafeEncodersError, ValueError):
    """The tower is not what the run claims (safe run not safe, stock run already swapped), or a bad option."""


def _flag(value: Any, name: str) -> bool:
    """A boolean model_arg as lmms-eval parses ``true`` / ``false``; anything else refused (never guessed)."""
    if isinstance(value, bool):
        return value
    raise SafeTowerError(f"llava_hf_safe: {name}={value!r}: expected true or false")


class SafeTowerMixin:
    """Adds ``safe``, ``safe_checkpoint`` and ``safe_revision`` to an lmms-eval LLaVA class's model_args."""

    def __init__(
        self,
        *args: Any,
        safe: bool = True,
        safe_checkpoint: str = "auto",
        safe_revision: str | None = None,
        **kwargs: Any,
    ) -> None:
        safe = _flag(safe, "safe")
        safe_checkpoint = str(safe_checkpoint)
        super().__init__(*args, **kwargs)  # lmms-eval loads the checkpoint, processor and accelerator here
        from safe_encoders import is_safe, make_safe, swap_report

        model = self.model  # lmms-eval's unwrapped model (the parameters a wrapper shares)
        if safe:
            hub = {"revision": str(safe_revision)} if safe_revision else {}
            make_safe(model, checkpoint=safe_checkpoint, **hub)
            if not is_safe(model):
                raise SafeTowerError(f"make_safe did not make {self.pretrained} safe; refusing to evaluate it as safe")
        elif is_safe(model):
            raise SafeTowerError(
                f"safe=false, but the tower of {self.pretrained} already carries a Safe-CLIP swap record: it is not "
                "the stock model the safe run is compared with"
            )
        self.safe = safe
        self.safe_checkpoint = safe_checkpoint if safe else None
        #: ``swap_report`` of the model as evaluated (per encoder: checkpoint, digest, ...; None = not swapped).
        self.swap = swap_report(model)


class SafeLlavaHf(SafeTowerMixin, _simple.LlavaHf):
    """lmms-eval's simple ``llava_hf`` with the Safe-CLIP tower (``--force_simple``; lmms-eval 0.7.3's simple class
    renders no ``<image>`` token through a llava-hf checkpoint's own chat template under transformers 5, with or
    without our tower: use the chat class)."""


class SafeLlavaHfChat(SafeTowerMixin, _chat.LlavaHf):
    """lmms-eval's chat ``llava_hf`` (its default) with the Safe-CLIP tower."""

    is_simple = False
