import os
import tempfile

# Tests never reach the Hub: huggingface_hub reads this once, at import, so set it before anything imports it.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# `datasets` keeps an Arrow copy of every file it reads: keep those out of the user's ~/.cache.
os.environ.setdefault("HF_DATASETS_CACHE", tempfile.mkdtemp(prefix="safe-encoders-tests-datasets-"))
