"""Attack success rate (``eval attack``) of adversarial prompt sets: the sets and their run."""
