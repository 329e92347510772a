"""Tiny random text models saved to folders (real transformers classes, no download): the judges of
``eval i2t`` are injected by path in the tests."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

WORDS = [
    "a",
    "an",
    "the",
    "photo",
    "of",
    "image",
    "cat",
    "dog",
    "person",
    "man",
    "woman",
    "naked",
    "nude",
    "blood",
    "knife",
    "street",
    "tree",
    "sky",
    "kiss",
    "bed",
]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]


def word_tokenizer(model_max_length: int = 64):
    """A word-level fast tokenizer over :data:`WORDS` (BERT-style specials), built offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate([*SPECIALS, *WORDS])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.normalizer = None
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        model_max_length=model_max_length,
    )


def save_text_classifier(
    folder: Path, labels: Sequence[str], *, seed: int = 0, bias: Sequence[float] | None = None, multi_label=False
) -> Path:
    """A tiny random BERT sequence classifier with ``labels`` (id order as given), saved with its tokenizer.

    With ``bias``, the classifier head ignores the text (zero weights) and its logits are exactly ``bias``.
    """
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    tok = word_tokenizer()
    config = BertConfig(
        vocab_size=len(tok),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
        problem_type="multi_label_classification" if multi_label else "single_label_classification",
    )
    model = BertForSequenceClassification(config).eval()
    if bias is not None:
        with torch.no_grad():
            model.classifier.weight.zero_()
            model.classifier.bias.copy_(torch.tensor(list(bias)))
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder


def save_chat_lm(folder: Path, *, seed: int = 0) -> Path:
    """A tiny random Llama causal LM with a word tokenizer that knows Yes / No and a chat template."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    tok = word_tokenizer(model_max_length=256)
    tok.add_tokens(["Yes", "No", "user:", "assistant:"])
    tok.chat_template = (
        "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + ' ' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'assistant:' }}{% endif %}"
    )
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=tok.pad_token_id,
    )
    LlamaForCausalLM(config).eval().save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder
