from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from eval.classifiers.nudenet import (
    I2P_NUDITY_LABELS,
    MACE_NUDITY_LABELS,
    NUDENET_LABELS,
    check_labels,
    nudenet_verdict,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

pytest.importorskip("nudenet", reason="nudenet is not installed (pip install 'safe-encoders[eval]')")


@pytest.fixture(scope="module")
def detector():
    from eval.classifiers.nudenet import NudeNetClassifier

    return NudeNetClassifier(batch_size=2)


def _drawn():
    im = Image.new("RGB", (256, 192), "white")
    d = ImageDraw.Draw(im)
    d.ellipse((40, 30, 200, 170), fill=(220, 170, 140), outline="black")
    d.rectangle((90, 80, 160, 120), fill=(30, 60, 200))
    return im


def test_real_images(detector, photos):
    blank = Image.new("RGB", (320, 320), (128, 128, 128))
    images = [blank, _drawn(), *photos]
    detections = detector.detect(images)
    assert detections[0] == []  # nothing on a blank canvas
    astronaut = detections[2]
    assert any(d["class"] == "FACE_FEMALE" and d["score"] >= 0.5 for d in astronaut)
    verdicts = detector.classify(images)
    assert [v.flagged for v in verdicts] == [False] * 5  # nothing exposed anywhere
    assert verdicts[0].score == 0.0
    # The same detections with a label set that contains the face class flag the astronaut.
    face = [nudenet_verdict(d, {"FACE_FEMALE"}, 0.5) for d in detections]
    assert face[2].flagged and not face[0].flagged


def test_channel_order_matches_reading_the_file(detector, photos, tmp_path):
    path = tmp_path / "astronaut.png"
    photos[0].save(path)
    from_file = detector._detector.detect(str(path))
    from_pil = detector.detect([photos[0]])[0]
    assert [d["class"] for d in from_pil] == [d["class"] for d in from_file]
    assert [d["score"] for d in from_pil] == pytest.approx([d["score"] for d in from_file], abs=1e-5)


def test_batched_equals_single(detector, photos):
    batched = detector.detect(photos)
    single = [detector.detect([im])[0] for im in photos]
    assert [[d["class"] for d in x] for x in batched] == [[d["class"] for d in x] for x in single]


def test_label_set_and_threshold_on_hand_made_outputs():
    dets = [
        {"class": "FACE_FEMALE", "score": 0.93, "box": [0, 0, 5, 5]},
        {"class": "FEMALE_BREAST_COVERED", "score": 0.88, "box": [0, 0, 5, 5]},
        {"class": "BUTTOCKS_EXPOSED", "score": 0.6, "box": [0, 0, 5, 5]},
        {"class": "BELLY_EXPOSED", "score": 0.75, "box": [0, 0, 5, 5]},
    ]
    v = nudenet_verdict(dets)  # I2P set at 0.6: BUTTOCKS_EXPOSED at exactly 0.6 counts
    assert v.flagged and v.score == pytest.approx(0.6)
    assert not nudenet_verdict(dets, threshold=0.61).flagged
    assert nudenet_verdict(dets, threshold=0.61).score == pytest.approx(0.6)
    mace = nudenet_verdict(dets, MACE_NUDITY_LABELS, 0.7)  # BELLY_EXPOSED is in MACE's set
    assert mace.flagged and mace.score == pytest.approx(0.75)
    covered_only = [d for d in dets if d["class"] in ("FACE_FEMALE", "FEMALE_BREAST_COVERED")]
    none = nudenet_verdict(covered_only)
    assert not none.flagged and none.score == 0.0
    assert nudenet_verdict([]).score == 0.0


def test_label_validation():
    assert I2P_NUDITY_LABELS < MACE_NUDITY_LABELS <= NUDENET_LABELS
    assert len(NUDENET_LABELS) == 18
    with pytest.raises(ValueError, match=r"unknown NudeNet labels \['EXPOSED_BREAST_F'\]"):
        check_labels(["EXPOSED_BREAST_F"])
    from eval.classifiers.nudenet import NudeNetClassifier

    with pytest.raises(ValueError, match=r"threshold must be in \[0, 1\]"):
        NudeNetClassifier(threshold=60)


def test_array_input(detector, photos):
    arr = np.asarray(photos[0])
    assert [d["class"] for d in detector.detect([arr])[0]] == [d["class"] for d in detector.detect(photos[:1])[0]]
