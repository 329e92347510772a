"""``python -m eval zero-shot``: what a safe encoder costs a CLIP user, measured with clip_benchmark's own
zero-shot classification and image-text retrieval functions (``models`` wraps our encoders in the interface it
expects, ``data`` reads local folders or clip_benchmark's datasets, ``run`` writes the tables)."""
