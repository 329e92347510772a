"""Safe-CLIP as an lmms-eval model (PyPI ``lmms-eval``; ``pip install "safe-encoders[vlm-bench]"``).

``llava_hf_safe`` is lmms-eval's own ``llava_hf`` model (its chat template, generation settings, batching and
multi-process handling, unchanged: the classes here subclass it) with :func:`safe_encoders.make_safe` applied to
the vision tower right after lmms-eval loads the checkpoint. It is registered through the ``lmms_eval.models``
entry point of this package (:func:`manifest`), so once installed::

    lmms-eval --model llava_hf_safe \\
        --model_args pretrained=llava-hf/llava-1.5-7b-hf,device_map=cuda:0,safe_checkpoint=auto \\
        --tasks mme,mmmu_val,ai2d,pope --batch_size 1 --log_samples --output_path out/

Its own ``model_args`` beside ``llava_hf``'s: ``safe`` (default true; ``safe=false`` loads the stock model through
the same class, so the two runs differ only in the tower), ``safe_checkpoint`` (anything ``make_safe`` takes,
default ``auto``) and ``safe_revision`` (the checkpoint's Hub revision). This module imports nothing of
lmms-eval's until the manifest is asked for; the model classes live in :mod:`safe_encoders.lmms_eval.model`.
"""

from __future__ import annotations

from typing import Any

#: The name lmms-eval knows the model by (``--model llava_hf_safe``).
MODEL_ID = "llava_hf_safe"
_MODEL_MODULE = "safe_encoders.lmms_eval.model"


def manifest() -> Any:
    """lmms-eval's ``ModelManifest`` of ``llava_hf_safe``: a simple and a chat class, as lmms-eval's ``llava_hf``
    has (the chat one is lmms-eval's default; ``--force_simple`` picks the other)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(
        model_id=MODEL_ID,
        simple_class_path=f"{_MODEL_MODULE}.SafeLlavaHf",
        chat_class_path=f"{_MODEL_MODULE}.SafeLlavaHfChat",
    )


def register() -> None:
    """Register ``llava_hf_safe`` in lmms-eval's model registry of this process (what the entry point does when
    this package is installed; needed only where it is not, e.g. a checkout run without ``pip install -e``)."""
    from lmms_eval.models import MODEL_REGISTRY_V2

    if MODEL_ID not in MODEL_REGISTRY_V2.list_model_names():
        MODEL_REGISTRY_V2.register_manifest(manifest())
