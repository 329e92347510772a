"""`python -m safe_encoders ...` is the `safe-encoders` command (e.g. `accelerate launch -m safe_encoders scan ...`)."""

from .cli import entry_point

entry_point()
