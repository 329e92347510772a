"""Text judges on tiny random classifiers saved to folders and injected by path (no download)."""

from __future__ import annotations

import math

import pytest
import torch

from eval.i2t.judges import JudgeError, JudgeSpec, build_judges
from tests.eval.text_models import save_chat_lm, save_text_classifier, word_tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TEXTS = ["a naked woman on the bed", "the cat on a tree", "blood on the street"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("judges")
    return {
        # toxic-bert's labels in another order: 'toxic' is not the first class; logits are exactly the biases
        "toxicity": save_text_classifier(
            root / "tox", ["severe_toxic", "toxic", "obscene"], bias=[3.0, math.log(3), -1.0], multi_label=True
        ),
        "nsfw": save_text_classifier(root / "nsfw", ["nsfw", "safe"], bias=[math.log(1 / 3), 0.0]),
        "nsfw_random": save_text_classifier(root / "nsfw_random", ["SFW", "NSFW"], seed=3),
        "lm": save_chat_lm(root / "lm"),
    }


def test_toxicity_is_100_sigmoid_of_the_toxic_logit(models):
    (judge,) = build_judges([f"toxicity:{models['toxicity']}"])
    verdicts = judge.classify(TEXTS)
    # sigmoid(log 3) = 3/4: not the first label's sigmoid(3) = 95.3, not a softmax over the three labels
    assert [v.score for v in verdicts] == pytest.approx([75.0] * 3)
    assert all(v.flagged for v in verdicts)  # flagged at 50
    assert judge.config["model"] == str(models["toxicity"])


def test_nsfw_is_the_softmax_probability_of_the_nsfw_label(models):
    (judge,) = build_judges([f"nsfw:{models['nsfw']}"])
    verdicts = judge.classify(TEXTS[:2])
    # softmax(log 1/3, 0)[nsfw] = (1/3) / (1/3 + 1) = 1/4
    assert [v.score for v in verdicts] == pytest.approx([0.25, 0.25])
    assert not any(v.flagged for v in verdicts)


def test_scores_follow_each_text_in_order_and_the_label_is_matched_case_blind(models):
    from transformers import AutoModelForSequenceClassification

    (judge,) = build_judges([f"nsfw:{models['nsfw_random']}"], batch_size=2)
    got = [v.score for v in judge.classify(TEXTS)]
    model = AutoModelForSequenceClassification.from_pretrained(models["nsfw_random"]).eval()
    tok = word_tokenizer()
    with torch.no_grad():
        probs = [model(**tok(t, return_tensors="pt")).logits.softmax(-1)[0, 1].item() for t in TEXTS]
    assert got == pytest.approx(probs, abs=1e-6)
    assert len(set(round(p, 6) for p in probs)) == 3  # the texts really score differently


def test_a_model_without_the_label_is_refused(models):
    (judge,) = build_judges([f"nsfw:{models['nsfw']}"], nsfw_label="unsafe")
    with pytest.raises(JudgeError, match="no label 'unsafe'"):
        judge.classify(TEXTS)


def test_nan_is_never_safe(models, tmp_path):
    folder = save_text_classifier(tmp_path / "nan", ["safe", "nsfw"], bias=[0.0, float("nan")])
    (judge,) = build_judges([f"nsfw:{folder}"])
    with pytest.raises(JudgeError, match="non-finite"):
        judge.classify(TEXTS[:1])


def test_llm_judge_reads_yes_against_no_from_the_first_answer_token(models):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    (judge,) = build_judges([f"llm:{models['lm']}"], batch_size=2)
    got = [v.score for v in judge.classify(TEXTS)]
    tok = AutoTokenizer.from_pretrained(models["lm"])
    lm = AutoModelForCausalLM.from_pretrained(models["lm"]).eval()
    yes, no = tok.convert_tokens_to_ids(["Yes", "No"])
    expected = []
    for text in TEXTS:
        prompt = tok.apply_chat_template(
            [{"role": "user", "content": judge.rubric.format(text=text)}], tokenize=False, add_generation_prompt=True
        )
        with torch.no_grad():
            logits = lm(**tok(prompt, return_tensors="pt", add_special_tokens=False)).logits[0, -1]
        expected.append(torch.softmax(logits[[yes, no]], -1)[0].item())
    assert got == pytest.approx(expected, abs=1e-5)
    assert [v.flagged for v in judge.classify(TEXTS)] == [p >= 0.5 for p in expected]


def test_specs():
    assert JudgeSpec.parse("llm:Qwen/Qwen2.5-7B-Instruct") == JudgeSpec("llm", "Qwen/Qwen2.5-7B-Instruct")
    assert JudgeSpec.parse("NSFW") == JudgeSpec("nsfw", None)
    with pytest.raises(JudgeError, match="unknown judge"):
        JudgeSpec.parse("perspective")
    with pytest.raises(JudgeError, match="one judge per kind"):
        build_judges(["nsfw", "nsfw:other"])
    with pytest.raises(JudgeError, match="needs a model"):
        build_judges(["llm"])
