"""Classifiers register their own options; the command line and a run's classifiers are built from the registry."""

import argparse

import pytest

from eval.classifiers import ClassifierOption, ClassifierOptions, Verdict, base, classifiers_from_config
from eval.options import add_classifier_options, classifier_options


class _Judge:
    name = "judge"

    def __init__(self, *, rubric: str = "none", batch_size: int = 1) -> None:
        self.rubric, self.batch_size = rubric, batch_size

    def classify(self, images):
        return [Verdict(False, 0.0) for _ in images]


@pytest.fixture
def registry(monkeypatch):
    """A copy of the registry for the test (the q16 / nudenet registrations included), restored after it."""
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))
    monkeypatch.setattr(ClassifierOptions, "judge_rubric", "strict", raising=False)  # a field the judge would add
    option = ClassifierOption("--judge-rubric", "judge_rubric", "rubric", help="the judge's rubric", parse=str.upper)
    base.register_classifier("judge", _Judge, options=[option], run_settings=["batch_size"])


def _parse(argv):
    parser = argparse.ArgumentParser()
    add_classifier_options(parser)
    return classifier_options(parser.parse_args(argv))


def test_builtin_options_come_from_the_q16_and_nudenet_registrations():
    parsed = _parse(["--q16-model", "my/clip", "--nudenet-labels", "A, B", "--nudenet-threshold", "0.3"])
    assert parsed["q16_model"] == "my/clip" and parsed["q16_prompts"] is None
    assert parsed["nudenet_labels"] == ["A", "B"] and parsed["nudenet_threshold"] == 0.3
    assert parsed["rule"] == ("q16", "nudenet") and parsed["classify_batch_size"] == 16
    defaults = _parse([])
    assert (
        defaults["nudenet_labels"] == sorted(defaults["nudenet_labels"])
        and "ANUS_EXPOSED" in defaults["nudenet_labels"]
    )


def test_a_registered_classifier_brings_its_flag_and_gets_its_value_and_the_run_settings(registry):
    parsed = _parse(["--judge-rubric", "lenient", "--rule", "judge", "--classify-batch-size", "5"])
    assert parsed["judge_rubric"] == "LENIENT" and parsed["rule"] == ("judge",)
    cfg = ClassifierOptions(**{k: v for k, v in parsed.items() if k != "judge_rubric"})
    cfg.judge_rubric = parsed["judge_rubric"]
    (judge,) = classifiers_from_config(cfg, device="cpu")
    assert (judge.rubric, judge.batch_size) == ("LENIENT", 5)  # no device: the judge did not ask for it


def test_registration_refuses_a_duplicate_name_and_unknown_run_settings(registry):
    with pytest.raises(ValueError, match="already registered"):
        base.register_classifier("judge", _Judge)
    with pytest.raises(ValueError, match="unknown run settings"):
        base.register_classifier("other", _Judge, run_settings=["gpu"])
    with pytest.raises(ValueError, match=r"unknown classifier 'jugde'.*did you mean 'judge'"):
        classifiers_from_config(ClassifierOptions(rule=("jugde",)))
