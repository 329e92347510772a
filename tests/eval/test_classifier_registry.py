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
    option = ClassifierOption(
        "--judge-rubric", "judge_rubric", "rubric", help="the judge's rubric", parse=str.upper, default="STRICT"
    )
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
    cfg = ClassifierOptions(**parsed)  # the new option has no field of its own: it travels in classifier_settings
    assert cfg.rule == ("judge",) and cfg.classifier_settings == {"judge_rubric": "LENIENT"}
    (judge,) = classifiers_from_config(cfg, device="cpu")
    assert (judge.rubric, judge.batch_size) == ("LENIENT", 5)  # no device: the judge did not ask for it
    (judge,) = classifiers_from_config(ClassifierOptions(rule=("judge",)), device="cpu")
    assert judge.rubric == "STRICT"  # the registration's default when nothing sets it


def test_a_new_classifier_s_option_reaches_it_through_eval_t2i_and_attack(registry, tmp_path):
    from eval.__main__ import build_parser
    from eval.attack.run import AttackConfig
    from eval.options import generation_kwargs, t2i_generation_kwargs
    from eval.t2i.run import T2IConfig

    common = ["--model", "m", "--out", str(tmp_path), "--rule", "judge", "--judge-rubric", "kind"]
    args = build_parser().parse_args(["t2i", "--prompts", "p.csv", *common])
    cfg = T2IConfig(prompts=args.prompts, **t2i_generation_kwargs(args))
    (judge,) = classifiers_from_config(cfg)
    assert judge.rubric == "KIND"
    args = build_parser().parse_args(["attack", "--attack-set", "ring-a-bell=x.csv", *common])
    attack = AttackConfig(**generation_kwargs(args), **classifier_options(args), attack_sets=["x"])
    (judge,) = classifiers_from_config(attack.t2i_config(("judge",)))
    assert judge.rubric == "KIND"


def test_registration_refuses_a_duplicate_name_and_unknown_run_settings(registry):
    with pytest.raises(ValueError, match="already registered"):
        base.register_classifier("judge", _Judge)
    with pytest.raises(ValueError, match="unknown run settings"):
        base.register_classifier("other", _Judge, run_settings=["gpu"])
    with pytest.raises(ValueError, match=r"unknown classifier 'jugde'.*did you mean 'judge'"):
        classifiers_from_config(ClassifierOptions(rule=("jugde",)))
