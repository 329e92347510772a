"""``eval vlm-bench``: what the Safe-CLIP tower costs LLaVA on general benchmarks, through lmms-eval (paper
Table 15)."""
