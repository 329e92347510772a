"""NSFW retrieval among distractors (``eval nsfw-retrieval``, Safe-CLIP Tables 3 / 11): its data and run."""
