"""The image-to-text evaluation (``eval i2t``, ``eval i2t-judge``): LLaVA with and without
Safe-CLIP, open judges, its report."""
