"""`safe-encoders app` without a browser: the command's errors, the lazy Gradio import, input checks, and the
footer's verification (fail closed). The page itself is tested in a real browser in test_app_browser.py."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import torch

from tests.safe_encoders.app.tiny_demo import demo_world, trusted_demo_folder

pytestmark = pytest.mark.usefixtures("one_torch_thread")
IMAGES = 4


@pytest.fixture(scope="module")
def models(tmp_path_factory, module_trust_dir):
    from safe_encoders.app import AppConfig, load_models

    root = trusted_demo_folder(tmp_path_factory.mktemp("demo"), module_trust_dir, images=IMAGES)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SAFE_ENCODERS_TRUST_DIR", str(module_trust_dir))
        return load_models(AppConfig.for_demo(root), say=lambda message: None)


def test_the_demo_writes_the_worlds_images_for_the_search_tab(models):
    import numpy as np
    from PIL import Image

    world = demo_world(IMAGES)
    folder = models.config.scan_images
    for kind, pixels in (("safe", world.safe_images), ("unsafe", world.unsafe_images)):
        for index in range(IMAGES):
            written = np.asarray(Image.open(f"{folder}/{kind}/{index:03d}.png"))
            assert np.array_equal(written, pixels[index].permute(1, 2, 0).numpy()), (kind, index)
    assert len(models.index(models.scan_folder)) == 2 * IMAGES


def test_the_core_package_and_the_command_line_never_import_gradio():
    code = (
        "import sys; import safe_encoders.app, safe_encoders.app.generate, safe_encoders.app.moderate, "
        "safe_encoders.app.search; from safe_encoders.cli import build_parser; build_parser(); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('gradio', 'playwright', 'matplotlib')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_app_without_a_demo_folder_says_what_to_run(tmp_path, capsys):
    from safe_encoders.cli import main

    assert main(["app", "--demo", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("safe-encoders app: error: --demo: ")
    assert "bash scripts/dev.sh demo" in err and "tiny SD pipeline" in err and "HySAC export" in err
    assert main(["app"]) == 2
    assert "pass --demo" in capsys.readouterr().err


def test_prompts_seeds_and_places_are_checked():
    from safe_encoders.app import AppConfig, AppError
    from safe_encoders.app.generate import check_prompt, check_seed

    with pytest.raises(AppError, match=r"The prompt has 10,000 characters; the limit is 2,000"):
        check_prompt("a" * 10_000)
    with pytest.raises(AppError, match="Type a prompt"):
        check_prompt("   ")
    assert check_prompt("a" * 2000) == "a" * 2000
    assert check_seed(7.0) == 7 and check_seed("12") == 12
    for bad in (-1, 2**32, 1.5, float("nan"), "x", None):
        with pytest.raises(AppError, match="seed"):
            check_seed(bad)
    assert AppConfig(host="127.0.0.1").loopback and AppConfig(host="::1").loopback
    assert AppConfig(host="localhost").loopback and not AppConfig(host="0.0.0.0").loopback
    with pytest.raises(AppError, match="steps"):
        AppConfig(steps=0)


def test_moderate_never_calls_an_unreadable_image_safe(models, tmp_path):
    from safe_encoders.app.moderate import moderate

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff truncated")
    verdicts = moderate(models, "a red circle\n\n", [str(broken)])
    assert [(v.item, v.modality) for v in verdicts] == [("a red circle", "text"), ("broken.jpg", "image")]
    assert verdicts[1].score is None and verdicts[1].unsafe is None and verdicts[1].verdict.endswith("not safe")
    assert str(tmp_path) not in verdicts[1].verdict  # the server's folders stay out of the page
    expected = models.hysac.unsafe_score(texts=["a red circle"]).text
    assert verdicts[0].score == pytest.approx(float(expected.scores[0]))
    assert verdicts[0].unsafe == bool(expected.unsafe[0])


def test_search_refuses_other_folders_when_served_beyond_this_machine(models, tmp_path):
    from safe_encoders.app import AppError
    from safe_encoders.app.search import run_search
    from safe_encoders.moderation import SearchError

    with pytest.raises(SearchError, match="is not a scan"):
        run_search(models, str(tmp_path), "a red circle", None, "keep", 3)
    with pytest.raises(AppError, match="no such folder"):
        run_search(models, str(tmp_path / "nope"), "a red circle", None, "keep", 3)
    public = dataclasses.replace(models, config=dataclasses.replace(models.config, host="0.0.0.0"))
    with pytest.raises(AppError, match="only searches the scan it was started with"):
        run_search(public, str(tmp_path), "a red circle", None, "keep", 3)
    assert len(run_search(public, None, "a red circle", None, "filter", 3)) <= 3


def test_the_footer_says_not_verified_once_the_safe_encoder_is_changed(models):
    from safe_encoders.app.models import footer_rows

    rows = dict(footer_rows(models))
    assert rows["make_safe is_safe(verify=True)"] == "True" and ", verified" in rows["make_safe"]
    weight = models.safe_pipe.text_encoder.get_input_embeddings().weight
    before = weight.detach().clone()
    try:
        with torch.no_grad():
            weight[0, 0] += 1.0  # the forward now reads a weight the swap did not install
        rows = dict(footer_rows(models))
        assert rows["make_safe is_safe(verify=True)"] == "False"
        assert "NOT verified" in rows["make_safe"]
    finally:
        with torch.no_grad():
            weight.copy_(before)
