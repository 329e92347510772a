"""ViSU retrieval (``eval retrieval``, Safe-CLIP Table 2) for encoder pairs: the pairs, their data,
cached embeddings."""
