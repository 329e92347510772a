import os

# Tests never reach the Hub: huggingface_hub reads this once, at import, so set it before anything imports it.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
