"""The one parser of checkpoint names, shared by resolve_source (encoders) and the HySAC loader."""

import pytest

from safe_encoders import CheckpointNotFoundError
from safe_encoders.hysac.checkpoints import locate
from safe_encoders.registry import CHECKPOINTS
from safe_encoders.sources.names import parse_source_name


def test_an_existing_path_wins_over_a_name_that_looks_like_a_hub_id(tmp_path, monkeypatch):
    (tmp_path / "org" / "name").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    parsed = parse_source_name("org/name")
    assert parsed.path is not None and parsed.path.resolve() == tmp_path / "org" / "name" and parsed.repo_id is None


@pytest.mark.parametrize(
    ("spelling", "repo_id"),
    [
        ("safeclip-vit-l-14", "aimagelab/safeclip_vit-l_14"),
        ("hf-hub:aimagelab/safeclip_vit-l_14", "aimagelab/safeclip_vit-l_14"),
        # A Hub id keeps the user's spelling, so that a cache filled under it is found offline (issue 15).
        ("AIMAGELAB/SafeClip_ViT-L_14", "AIMAGELAB/SafeClip_ViT-L_14"),
    ],
)
def test_registered_names_pin_their_revision_unless_one_is_given(spelling, repo_id, tmp_path):
    entry = CHECKPOINTS["safeclip-vit-l-14"]
    parsed = parse_source_name(spelling, cache_dir=tmp_path)  # an empty cache: no spelling found there
    assert (parsed.path, parsed.repo_id, parsed.entry) == (None, repo_id, entry)
    assert parsed.hub_kwargs({"token": "t"}) == {"revision": entry.revision, "token": "t"}
    assert parsed.hub_kwargs({"revision": "abc"})["revision"] == "abc"


def test_an_unregistered_hub_id_is_taken_as_it_is():
    parsed = parse_source_name("hf-hub:someone/their-clip")
    assert (parsed.path, parsed.repo_id, parsed.entry) == (None, "someone/their-clip", None)
    assert parsed.hub_kwargs({}) == {}


@pytest.mark.parametrize("name", ["no-slash-name", "missing/file.safetensors", "a/b/c"])
def test_what_is_no_path_registered_name_or_hub_id_is_refused_by_both_loaders(name):
    with pytest.raises(CheckpointNotFoundError, match=r"Checkpoint .* not an existing file or folder"):
        parse_source_name(name)
    with pytest.raises(CheckpointNotFoundError, match=r"^HySAC model .* not an existing file or folder"):
        locate(name, {})
    with pytest.raises(TypeError, match="must be a registry name"):
        parse_source_name(3)
