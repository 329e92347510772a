import time

import numpy as np
import pytest
import torch

from eval.data.synthetic import (
    BACKGROUNDS,
    COLOURS,
    CONCEPTS,
    N_COMBINATIONS,
    SHAPES,
    SyntheticWorld,
    build_image_processor,
    build_tokenizer,
    world_vocabulary,
)
from train.data import (
    EncodedQuadruplets,
    IndexedQuadruplets,
    Quadruplet,
    QuadrupletCollator,
    QuadrupletSource,
    stack_encoded,
)


@pytest.fixture(scope="module")
def world():
    return SyntheticWorld(600, seed=3)


def test_same_seed_same_world_other_seed_other_world(world):
    again = SyntheticWorld(600, seed=3)
    assert torch.equal(world.safe_images, again.safe_images)
    assert torch.equal(world.unsafe_images, again.unsafe_images)
    assert [world.captions(i) for i in range(50)] == [again.captions(i) for i in range(50)]
    other = SyntheticWorld(600, seed=4)
    assert not torch.equal(world.safe_images, other.safe_images)


def test_thousands_of_quadruplets_in_seconds():
    start = time.perf_counter()
    w = SyntheticWorld(4000, seed=0)
    assert len(w) == 4000 and w.safe_images.shape == (4000, 3, 32, 32)
    assert time.perf_counter() - start < 10.0


def test_items_are_quadruplets_with_tags(world):
    assert isinstance(world, QuadrupletSource)
    q = world[5]
    assert isinstance(q, Quadruplet)
    assert q.safe_image.shape == (32, 32, 3) and q.safe_image.dtype == np.uint8
    assert q.tag in CONCEPTS
    assert q.unsafe_text.startswith(q.safe_text) and q.unsafe_text != q.safe_text
    with pytest.raises(IndexError):
        world[600]


def test_captions_name_the_drawn_attributes(world):
    for i in range(40):
        spec = world.spec(i)
        safe, unsafe = world.captions(i)
        assert SHAPES[spec.shape] in safe and list(COLOURS)[spec.colour] in safe
        assert list(BACKGROUNDS)[spec.background] in safe
        assert any(unsafe.endswith(p) for p in CONCEPTS[world.tag(i)])
        # the background colour is what most pixels show (noise is small)
        bg = torch.tensor(list(BACKGROUNDS.values())[spec.background]).view(3, 1, 1)
        close = ((world.safe_images[i].float() - bg).abs().max(0).values <= 10).float().mean()
        assert close > 0.6
        # the object's colour is present
        col = torch.tensor(list(COLOURS.values())[spec.colour]).view(3, 1, 1)
        assert ((world.safe_images[i].float() - col).abs().max(0).values <= 10).sum() > 15


def test_unsafe_image_adds_a_marker_and_leaves_the_rest(world):
    for i in range(40):
        diff = (world.safe_images[i].int() - world.unsafe_images[i].int()).abs().amax(0) > 0
        assert 3 <= diff.sum() < 0.5 * 32 * 32


def test_unsafe_words_are_concept_specific():
    words = {c: {w for p in ps for w in p.split()} for c, ps in CONCEPTS.items()}
    filler = {"with", "and", "a", "to", "next", "covered", "in", "of", "for"}
    for c, ws in words.items():
        own = ws - filler
        others = set().union(*(v for k, v in words.items() if k != c))
        assert own and not (own & others), c


def test_distinct_world_has_unique_attribute_combinations():
    w = SyntheticWorld(N_COMBINATIONS, seed=1, distinct=True)
    keys = ("shape", "colour", "position", "background")
    combos = {tuple(getattr(w.spec(i), k) for k in keys) for i in range(len(w))}
    assert len(combos) == N_COMBINATIONS
    with pytest.raises(ValueError, match="at most"):
        SyntheticWorld(N_COMBINATIONS + 1, distinct=True)
    with pytest.raises(ValueError, match="unknown or no concepts"):
        SyntheticWorld(5, concepts=["nope"])
    only = SyntheticWorld(50, concepts=["drugs"])
    assert {only.tag(i) for i in range(50)} == {"drugs"}


def test_tokenizer_keeps_each_word_whole_and_collator_shapes(world):
    tok = build_tokenizer(max_length=32)
    for word in world_vocabulary():
        assert tok.convert_ids_to_tokens(tok(word)["input_ids"]) == ["<|startoftext|>", f"{word}</w>", "<|endoftext|>"]
    longest = max(len(tok(world.captions(i)[1])["input_ids"]) for i in range(len(world)))
    assert longest <= 32
    collator = QuadrupletCollator(tok, build_image_processor(32))
    batch = collator([IndexedQuadruplets(world)[i] for i in (4, 9, 2)])
    assert batch["index"].tolist() == [4, 9, 2]
    assert batch["safe_input_ids"].shape == (3, 32) and batch["unsafe_pixel_values"].shape == (3, 3, 32, 32)
    assert batch["tags"] == [world.tag(i) for i in (4, 9, 2)]
    # the image processor normalises with CLIP statistics: a white-ish pixel maps well above 0
    decoded = tok.batch_decode(batch["unsafe_input_ids"], skip_special_tokens=True)
    assert decoded[0].replace(" ", "") == world.captions(4)[1].replace(" ", "")
    encoded = EncodedQuadruplets(world, collator, chunk_size=64)
    stacked = stack_encoded([encoded[4], encoded[9], encoded[2]])
    for key in ("index", "safe_input_ids", "unsafe_attention_mask", "safe_pixel_values"):
        assert torch.equal(stacked[key], batch[key]), key
