import os
import tempfile

import pytest

# Tests never reach the Hub: huggingface_hub reads this once, at import, so set it before anything imports it.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# `datasets` keeps an Arrow copy of every file it reads: keep those out of the user's ~/.cache.
os.environ.setdefault("HF_DATASETS_CACHE", tempfile.mkdtemp(prefix="safe-encoders-tests-datasets-"))


@pytest.fixture(scope="module")
def one_torch_thread():
    """Torch on one thread for a whole test module, restored after it; modules opt in with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``.

    Tiny models run fastest on one thread; with several, a busy 2-core CI box spends its time spinning.
    Module scope so that module-scoped fixtures (tiny models, a pre-trained world) are built single-threaded too.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
