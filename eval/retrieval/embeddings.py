"""Embeddings of encoder pairs, cached on disk (safetensors) per (encoder identity, tokenizer or image processor,
data), so that comparing several models, or models sharing a tower, never encodes the same thing twice."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from eval.errors import RetrievalError
from eval.placement import default_device
from eval.retrieval.data import RetrievalData
from eval.retrieval.encoder_pairs import EncoderPair
from safe_encoders.sources import resolve_source

logger = logging.getLogger("safe_encoders.eval")

CACHE_VERSION = 1


class EmbeddingCache:
    """Embedding matrices on disk (safetensors), one file per (encoder, preprocessing, data, kind)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, identity: str) -> Path:
        return self.root / f"{hashlib.sha256(identity.encode('utf-8')).hexdigest()[:24]}.safetensors"

    def get(self, identity: str) -> dict[str, torch.Tensor] | None:
        path = self.path(identity)
        if not path.is_file():
            return None
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
        if meta.get("identity") != identity:
            logger.warning("embedding cache %s belongs to another key; recomputing", path)
            return None
        return load_file(str(path))

    def put(self, identity: str, tensors: Mapping[str, torch.Tensor]) -> Path:
        from safe_encoders.atomic import atomic_write

        contiguous = {k: v.contiguous() for k, v in tensors.items()}
        metadata = {"identity": identity, "version": str(CACHE_VERSION)}
        return atomic_write(self.path(identity), lambda tmp: save_file(contiguous, tmp, metadata=metadata))


def processor_source(pair: EncoderPair, kind: str, base: str | None) -> str:
    """Where the tokenizer (text) or image processor (vision) of a pair is read from (``base``: the
    resolved source's base model)."""
    if pair.processor:
        return pair.processor
    src = pair.text if kind == "text" else pair.vision
    path = Path(src)
    if path.is_dir() and (has_tokenizer(path) if kind == "text" else has_image_processor(path)):
        return str(path)
    if base:
        return base
    if not path.exists():
        return src  # a Hub id: its own tokenizer / processor
    raise RetrievalError(
        f"model {pair.name!r}: cannot tell which tokenizer / image processor goes with {src}; pass --processor"
    )


def has_tokenizer(folder: Path) -> bool:
    return (folder / "tokenizer_config.json").is_file()


def has_image_processor(folder: Path) -> bool:
    """Whether ``folder`` holds an image processor: ``preprocessor_config.json``, or the ``processor_config.json``
    with an ``image_processor`` entry that transformers 5's ``CLIPProcessor.save_pretrained`` writes alone."""
    if (folder / "preprocessor_config.json").is_file():
        return True
    try:
        config = json.loads((folder / "processor_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and isinstance(config.get("image_processor"), dict)


def _processor_identity(spec: str) -> str:
    path = Path(spec)
    if path.is_dir():
        stamps = sorted(
            f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}"
            for p in path.iterdir()
            if p.is_file() and p.suffix in (".json", ".txt", ".model")
        )
        return f"dir:{path.resolve()}|" + "|".join(stamps)
    return spec


def load_encoder(source: str, kind: str, device: torch.device) -> torch.nn.Module:
    """The encoder (with its projection head) of ``source``, via safe_encoders."""
    from safe_encoders import load_text_encoder, load_vision_encoder

    loader = load_text_encoder if kind == "text" else load_vision_encoder
    return loader(source, with_projection=True, device=device).eval()


@torch.no_grad()
def _embed_texts(
    model: torch.nn.Module, tokenizer: Any, texts: Sequence[str], batch_size: int, device: torch.device
) -> torch.Tensor:
    out = []
    max_length = min(tokenizer.model_max_length, model.config.max_position_embeddings)
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(
            list(texts[start : start + batch_size]),
            padding="max_length",
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        emb = model(input_ids=enc["input_ids"].to(device), attention_mask=enc["attention_mask"].to(device))
        out.append(emb.text_embeds.float().cpu())
    return torch.cat(out)


def embed_image_files(
    paths: Sequence[str | Path], batch_size: int, embed: Callable[[list[Any]], torch.Tensor]
) -> torch.Tensor:
    """``embed`` (a list of RGB PIL images -> their embedding rows) over the image files ``paths``, ``batch_size``
    files open at a time; the rows concatenated in the order of ``paths``."""
    from PIL import Image

    out = []
    for start in range(0, len(paths), batch_size):
        images = []
        for p in paths[start : start + batch_size]:
            with Image.open(p) as im:
                images.append(im.convert("RGB"))
        out.append(embed(images))
    return torch.cat(out)


@torch.no_grad()
def _embed_images(
    model: torch.nn.Module, processor: Any, paths: Sequence[Path], batch_size: int, device: torch.device
) -> torch.Tensor:
    def embed(images: list[Any]) -> torch.Tensor:
        pixels = processor(images, return_tensors="pt")["pixel_values"].to(device=device, dtype=model.dtype)
        return model(pixel_values=pixels).image_embeds.float().cpu()

    return embed_image_files(paths, batch_size, embed)


@dataclass
class Embedder:
    """Embeds retrieval data with encoder pairs, through the on-disk cache.

    ``loader(source, kind, device)`` builds an encoder (default :func:`load_encoder`); ``encoded``
    counts the (pair name, kind) embeddings actually computed rather than read from the cache.
    """

    cache: EmbeddingCache
    batch_size: int = 64
    device: torch.device = field(default_factory=default_device)
    loader: Callable[[str, str, torch.device], torch.nn.Module] = load_encoder
    encoded: list[tuple[str, str]] = field(default_factory=list)

    def embed(self, pair: EncoderPair, data: RetrievalData) -> dict[str, torch.Tensor]:
        """``text_safe, text_unsafe, image_safe, image_unsafe`` embedding matrices of ``data``."""
        out: dict[str, torch.Tensor] = {}
        for kind in ("text", "vision"):
            source = pair.text if kind == "text" else pair.vision
            resolved = resolve_source(source, kind)  # once: it may read Hub files
            proc = processor_source(pair, kind, resolved.base_model)
            encoder = {"kind": kind, "identity": resolved.identity, "digest": resolved.digest}
            identity = json.dumps(
                {
                    "encoder": json.dumps(encoder, sort_keys=True),
                    "processor": _processor_identity(proc),
                    "data": data.key(kind),
                    "split": data.split,
                    "version": CACHE_VERSION,
                }
            )
            cached = self.cache.get(identity)
            if cached is None:
                model = self.loader(source, kind, self.device)
                if kind == "text":
                    from transformers import AutoTokenizer

                    tok = AutoTokenizer.from_pretrained(proc)
                    cached = {
                        "safe": _embed_texts(model, tok, data.safe_texts, self.batch_size, self.device),
                        "unsafe": _embed_texts(model, tok, data.unsafe_texts, self.batch_size, self.device),
                    }
                else:
                    from transformers import AutoImageProcessor

                    ip = AutoImageProcessor.from_pretrained(proc)
                    cached = {
                        "safe": _embed_images(model, ip, data.safe_images, self.batch_size, self.device),
                        "unsafe": _embed_images(model, ip, data.unsafe_images, self.batch_size, self.device),
                    }
                del model
                self.cache.put(identity, cached)
                self.encoded.append((pair.name, kind))
            prefix = "text" if kind == "text" else "image"
            out[f"{prefix}_safe"], out[f"{prefix}_unsafe"] = cached["safe"], cached["unsafe"]
        return out

    def embed_lists(self, pair: EncoderPair, kind: str, lists: Mapping[str, Sequence[Any]]) -> dict[str, torch.Tensor]:
        """Embed named lists of texts (``kind="text"``) or image paths (``"vision"``) with one tower of ``pair``.

        Each list is cached on its own (keyed by its content, see :func:`list_key`), so lists shared between
        calls (e.g. distractors) are encoded once; the tower is loaded at most once per call.
        """
        if kind not in ("text", "vision"):
            raise RetrievalError(f"kind must be 'text' or 'vision', got {kind!r}")
        source = pair.text if kind == "text" else pair.vision
        resolved = resolve_source(source, kind)
        proc = processor_source(pair, kind, resolved.base_model)
        encoder = json.dumps({"kind": kind, "identity": resolved.identity, "digest": resolved.digest}, sort_keys=True)
        model = processor = None
        out: dict[str, torch.Tensor] = {}
        for name, items in lists.items():
            identity = json.dumps(
                {
                    "encoder": encoder,
                    "processor": _processor_identity(proc),
                    "data": list_key(kind, items),
                    "version": CACHE_VERSION,
                }
            )
            cached = self.cache.get(identity)
            if cached is None:
                if model is None:
                    from transformers import AutoImageProcessor, AutoTokenizer

                    model = self.loader(source, kind, self.device)
                    processor = (AutoTokenizer if kind == "text" else AutoImageProcessor).from_pretrained(proc)
                embed = _embed_texts if kind == "text" else _embed_images
                cached = {"embeddings": embed(model, processor, list(items), self.batch_size, self.device)}
                self.cache.put(identity, cached)
                self.encoded.append((pair.name, f"{kind}:{name}"))
            out[name] = cached["embeddings"]
        return out


def list_key(kind: str, items: Sequence[Any]) -> str:
    """Digest of a list the ``kind`` tower sees: the texts, or the image files' paths, sizes and mtimes."""
    if kind == "text":
        payload: Any = list(items)
    else:
        payload = [[str(Path(p).resolve()), Path(p).stat().st_size, Path(p).stat().st_mtime_ns] for p in items]
    return hashlib.sha256(json.dumps([kind, payload]).encode("utf-8")).hexdigest()
