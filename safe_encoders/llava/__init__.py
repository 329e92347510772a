"""The LLaVA adapter: which vision tower `make_safe` swaps."""

from .models import LLAVA_MODEL, vision_tower_slots

__all__ = ["LLAVA_MODEL", "vision_tower_slots"]
