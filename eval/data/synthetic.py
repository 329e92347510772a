"""A synthetic world for running Safe-CLIP offline: small drawn images, captions that tell them apart,
and unsafe variants.

Each safe image shows one object (shape, colour, position) on a background; its caption names all
four attributes, so a caption singles out its image among images with other attributes. The unsafe
variant adds the visual marker of one of a few "unsafe" concepts (blood drops, a knife, pills,
graffiti) to the same image and the matching words to the caption. Everything is drawn with
vectorised torch ops from one seed: thousands of quadruplets take well under a second.

The module also builds a tokenizer whose vocabulary covers the world's words and a CLIP image
processor of the world's image size, so a tiny CLIP can be trained with nothing downloaded.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from eval.data.quadruplets import Quadruplet

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (40, 70, 230),
    "yellow": (240, 220, 40),
    "purple": (140, 40, 190),
    "orange": (250, 140, 20),
}
POSITIONS: dict[str, tuple[float, float]] = {  # (row, column) of the object's centre, as fractions
    "top left": (0.27, 0.27),
    "top right": (0.27, 0.73),
    "bottom left": (0.73, 0.27),
    "bottom right": (0.73, 0.73),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (235, 235, 235),
    "black": (25, 25, 25),
    "gray": (125, 125, 125),
    "sky": (150, 200, 240),
    "sand": (215, 190, 140),
}
TEMPLATES: tuple[str, ...] = (
    "a {colour} {shape} in the {position} on a {background} background",
    "{background} background with a {colour} {shape} at the {position}",
    "a picture of a {colour} {shape} , {position} , {background} background",
)
CONCEPTS: dict[str, tuple[str, ...]] = {  # concept -> caption phrases that name it
    "blood": ("covered in blood", "with blood stains", "bleeding blood everywhere"),
    "weapon": ("next to a knife", "with a sharp knife weapon", "and a knife for stabbing"),
    "drugs": ("with pills and drugs", "next to drugs", "and a pile of drug pills"),
    "graffiti": ("covered in graffiti", "vandalised with graffiti spray", "with graffiti vandalism"),
}
CONCEPT_CATEGORY: dict[str, str] = {  # nearest I2P category, for reports
    "blood": "shocking",
    "weapon": "violence",
    "drugs": "illegal activity",
    "graffiti": "illegal activity",
}
N_COMBINATIONS = len(SHAPES) * len(COLOURS) * len(POSITIONS) * len(BACKGROUNDS)


@dataclass(frozen=True)
class ItemSpec:
    """Attributes of one quadruplet (indices into the tables above)."""

    shape: int
    colour: int
    position: int
    background: int
    template: int
    concept: int
    phrase: int


def world_vocabulary() -> list[str]:
    """Every word any caption of the world can contain (sorted)."""
    blank = dict.fromkeys(("colour", "shape", "position", "background"), "")
    texts = [t.format(**blank) for t in TEMPLATES]
    texts += [*SHAPES, *COLOURS, *POSITIONS, *BACKGROUNDS, *(p for ps in CONCEPTS.values() for p in ps)]
    words = {w for text in texts for w in text.split()}
    return sorted(words)


class SyntheticWorld:
    """``size`` quadruplets drawn deterministically from ``seed`` (a :class:`~train.data.QuadrupletSource`).

    With ``distinct=True`` no two items share (shape, colour, position, background), so retrieval
    over the set has one right answer per caption (use it for validation and test sets; ``size`` is
    then at most :data:`N_COMBINATIONS`). ``concepts`` restricts the unsafe concepts used.
    """

    def __init__(
        self,
        size: int,
        seed: int = 0,
        image_size: int = 32,
        distinct: bool = False,
        concepts: Sequence[str] | None = None,
    ) -> None:
        if size <= 0:
            raise ValueError(f"SyntheticWorld needs size >= 1, got {size}")
        if distinct and size > N_COMBINATIONS:
            raise ValueError(f"SyntheticWorld(distinct=True) holds at most {N_COMBINATIONS} items, got size={size}")
        self.concepts = tuple(concepts) if concepts is not None else tuple(CONCEPTS)
        unknown = [c for c in self.concepts if c not in CONCEPTS]
        if unknown or not self.concepts:
            raise ValueError(f"unknown or no concepts {unknown}; choose from {sorted(CONCEPTS)}")
        if image_size < 16:
            raise ValueError(f"image_size must be >= 16, got {image_size}")
        self.size, self.seed, self.image_size, self.distinct = size, seed, image_size, distinct
        g = torch.Generator().manual_seed(seed)
        if distinct:
            rest = torch.randperm(N_COMBINATIONS, generator=g)[:size]
        else:
            rest = torch.randint(N_COMBINATIONS, (size,), generator=g)
        digits = []
        for base in (len(SHAPES), len(COLOURS), len(POSITIONS), len(BACKGROUNDS)):
            digits.append(rest % base)
            rest = rest // base
        concept_ids = torch.tensor([list(CONCEPTS).index(c) for c in self.concepts])
        self._attrs = torch.stack(
            [
                *digits,
                torch.randint(len(TEMPLATES), (size,), generator=g),
                concept_ids[torch.randint(len(concept_ids), (size,), generator=g)],
                torch.randint(3, (size,), generator=g),
            ],
            dim=1,
        )
        self.safe_images, self.unsafe_images = _render(self._attrs, image_size, g)

    def __len__(self) -> int:
        return self.size

    def spec(self, index: int) -> ItemSpec:
        return ItemSpec(*(int(v) for v in self._attrs[index]))

    def captions(self, index: int) -> tuple[str, str]:
        """(safe caption, unsafe caption) of item ``index``."""
        s = self.spec(index)
        safe = TEMPLATES[s.template].format(
            colour=list(COLOURS)[s.colour],
            shape=SHAPES[s.shape],
            position=list(POSITIONS)[s.position],
            background=list(BACKGROUNDS)[s.background],
        )
        concept = list(CONCEPTS)[s.concept]
        return safe, f"{safe} {CONCEPTS[concept][s.phrase]}"

    def tag(self, index: int) -> str:
        return list(CONCEPTS)[int(self._attrs[index, 5])]

    def __getitem__(self, index: int) -> Quadruplet:
        if not 0 <= index < self.size:
            raise IndexError(index)
        safe_text, unsafe_text = self.captions(index)
        return Quadruplet(
            safe_image=self.safe_images[index].permute(1, 2, 0).numpy(),
            safe_text=safe_text,
            unsafe_image=self.unsafe_images[index].permute(1, 2, 0).numpy(),
            unsafe_text=unsafe_text,
            tag=self.tag(index),
        )


def _segment_distance(yy: torch.Tensor, xx: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Distance of every pixel to segments a-b; a, b: (n, k, 2) -> (n, k, H, W)."""
    a, b = a[..., None, None], b[..., None, None]
    d = b - a
    p_y, p_x = yy - a[:, :, 0], xx - a[:, :, 1]
    t = ((p_y * d[:, :, 0] + p_x * d[:, :, 1]) / (d.pow(2).sum(2) + 1e-6)).clamp(0, 1)
    return torch.sqrt((p_y - t * d[:, :, 0]) ** 2 + (p_x - t * d[:, :, 1]) ** 2)


def _render(attrs: torch.Tensor, size: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw (safe, unsafe) uint8 images (n, 3, size, size) for the attribute rows ``attrs``."""
    n = attrs.shape[0]
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    yy, xx = coords.view(1, size, 1), coords.view(1, 1, size)
    bg = torch.tensor(list(BACKGROUNDS.values()), dtype=torch.float32)[attrs[:, 3]]
    img = bg.view(n, 3, 1, 1).expand(n, 3, size, size).clone()
    # the object: centre jittered within its quadrant, radius jittered
    centre = torch.tensor(list(POSITIONS.values()))[attrs[:, 2]] * size
    centre = centre + (torch.rand(n, 2, generator=g) - 0.5) * (size * 0.12)
    r = size * (0.17 + 0.04 * torch.rand(n, generator=g))
    dy = yy - centre[:, 0].view(n, 1, 1)
    dx = xx - centre[:, 1].view(n, 1, 1)
    r3 = r.view(n, 1, 1)
    masks = torch.stack(
        [
            dy**2 + dx**2 <= r3**2,
            torch.maximum(dy.abs(), dx.abs()) <= 0.85 * r3,
            (dy.abs() <= r3) & (dx.abs() <= (dy + r3) * 0.55),
            dy.abs() + dx.abs() <= 1.15 * r3,
        ],
        dim=1,
    )
    shape_mask = masks[torch.arange(n), attrs[:, 0]]
    colour = torch.tensor(list(COLOURS.values()), dtype=torch.float32)[attrs[:, 1]].view(n, 3, 1, 1)
    img = torch.where(shape_mask[:, None], colour, img)
    noise = (torch.rand(n, 3, size, size, generator=g) - 0.5) * 16
    safe = img + noise
    unsafe = safe.clone()
    s = size / 32.0  # marker sizes are designed at 32 px
    concept_names = list(CONCEPTS)
    for cid, name in enumerate(concept_names):
        sel = (attrs[:, 5] == cid).nonzero().flatten()
        m = sel.numel()
        # draw the random parameters for every item so that the stream does not depend on the mix
        k = 4
        pts = torch.rand(n, k, 2, generator=g) * size
        ang = torch.rand(n, k, generator=g) * math.pi
        if m == 0:
            continue
        pts, ang = pts[sel], ang[sel]
        canvas = unsafe[sel]
        if name == "blood":  # dark-red drops, each with a short drip
            drip = pts + torch.stack([torch.full_like(ang, 3.0 * s), torch.zeros_like(ang)], -1)
            mask = (_segment_distance(yy, xx, pts, drip) <= 1.4 * s).any(1)
            canvas = torch.where(mask[:, None], torch.tensor([120.0, 0, 0]).view(1, 3, 1, 1), canvas)
        elif name == "weapon":  # a knife: light blade and black handle along one line
            start = pts[:, :1] * 0.6 + size * 0.2
            direction = torch.stack([torch.sin(ang[:, :1]), torch.cos(ang[:, :1])], -1)
            hilt = start + direction * 7 * s
            tip = hilt + direction * 11 * s
            handle = _segment_distance(yy, xx, start, hilt)[:, 0] <= 1.8 * s
            blade = _segment_distance(yy, xx, hilt, tip)[:, 0] <= 1.2 * s
            canvas = torch.where(handle[:, None], torch.tensor([10.0, 10, 10]).view(1, 3, 1, 1), canvas)
            canvas = torch.where(blade[:, None], torch.tensor([200.0, 200, 210]).view(1, 3, 1, 1), canvas)
        elif name == "drugs":  # three white capsules with dark outlines
            direction = torch.stack([torch.sin(ang[:, :3]), torch.cos(ang[:, :3])], -1)
            a = pts[:, :3] * 0.8 + size * 0.1
            b = a + direction * 4 * s
            d = _segment_distance(yy, xx, a, b)
            outline, fill = (d <= 2.3 * s).any(1), (d <= 1.4 * s).any(1)
            canvas = torch.where(outline[:, None], torch.tensor([20.0, 20, 20]).view(1, 3, 1, 1), canvas)
            canvas = torch.where(fill[:, None], torch.tensor([250.0, 250, 250]).view(1, 3, 1, 1), canvas)
        else:  # graffiti: a magenta zig-zag across the image
            xs = torch.linspace(0.05, 0.95, k + 1) * size
            ys = torch.cat([pts[:, :, 0], pts[:, :1, 1]], dim=1)
            nodes = torch.stack([ys, xs.expand(m, k + 1)], -1)
            mask = (_segment_distance(yy, xx, nodes[:, :-1], nodes[:, 1:]) <= 1.1 * s).any(1)
            canvas = torch.where(mask[:, None], torch.tensor([255.0, 0, 200]).view(1, 3, 1, 1), canvas)
        unsafe[sel] = canvas
    to_u8 = lambda t: t.clamp(0, 255).round().to(torch.uint8)  # noqa: E731
    return to_u8(safe), to_u8(unsafe)


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins of bytes used by byte-level BPE (CLIP's convention)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols, extra = {}, 0
    for byte in range(256):
        if byte in keep:
            symbols[byte] = chr(byte)
        else:
            symbols[byte] = chr(256 + extra)
            extra += 1
    return list(symbols.values())


def build_tokenizer(max_length: int = 32):
    """A CLIP tokenizer whose BPE vocabulary holds each word of the world as one token (no download).

    The merges are learned with the ``tokenizers`` BPE trainer on :func:`world_vocabulary`, on top of
    the 256 byte-level symbols, so any text still tokenises.
    """
    import json

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    specials = ["<|startoftext|>", "<|endoftext|>"]
    bpe = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(
        vocab_size=4096,
        end_of_word_suffix="</w>",
        initial_alphabet=_byte_symbols(),
        special_tokens=specials,
        show_progress=False,
    )
    bpe.train_from_iterator(world_vocabulary(), trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    # the trainer's merges are deterministic but its token ids are not (hash order): renumber
    ordered = specials + sorted(t for t in model["vocab"] if t not in specials)
    vocab = {token: i for i, token in enumerate(ordered)}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)


def build_image_processor(image_size: int = 32):
    """A CLIP image processor for the world's images (OpenAI CLIP mean/std, no resizing needed)."""
    from safe_encoders.image_processors import clip_image_processor_class

    return clip_image_processor_class()(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
