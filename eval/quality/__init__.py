"""Image quality (``eval quality``): FID and CLIP score per condition on a caption set."""
