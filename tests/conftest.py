import os
import tempfile

import pytest

# Tests never reach the Hub: huggingface_hub reads this once, at import, so set it before anything imports it.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# `datasets` keeps an Arrow copy of every file it reads: keep those out of the user's ~/.cache.
os.environ.setdefault("HF_DATASETS_CACHE", tempfile.mkdtemp(prefix="safe-encoders-tests-datasets-"))
# Module- and session-scoped fixtures run before the per-test trust store below: they get a private one too.
os.environ.setdefault("SAFE_ENCODERS_TRUST_DIR", tempfile.mkdtemp(prefix="safe-encoders-tests-trust-"))


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


# A strict run (CI sets SAFE_ENCODERS_STRICT_SKIPS=1) fails when a test skips for any reason other than a missing
# large data file (tests.tiny_models.DATA_SKIP_REASON): a plain clone must run the whole core suite.
_unexpected_skips: list[str] = []


def _note_skip(report) -> None:
    from tests.tiny_models import DATA_SKIP_REASON

    if not report.skipped or hasattr(report, "wasxfail") or not isinstance(report.longrepr, tuple):
        return
    if DATA_SKIP_REASON not in report.longrepr[2]:
        _unexpected_skips.append(f"{report.nodeid}: {report.longrepr[2]}")


def pytest_runtest_logreport(report) -> None:
    _note_skip(report)


def pytest_collectreport(report) -> None:
    _note_skip(report)


def pytest_sessionfinish(session, exitstatus) -> None:
    if _unexpected_skips and os.environ.get("SAFE_ENCODERS_STRICT_SKIPS") == "1":
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        count = len(_unexpected_skips)
        lines = ["", f"SAFE_ENCODERS_STRICT_SKIPS: {count} test(s) skipped without a data-file reason:"]
        for line in [*lines, *_unexpected_skips]:
            reporter.write_line(line) if reporter else print(line)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(autouse=True)
def _private_trust_store(tmp_path_factory, monkeypatch):
    """Every test gets an empty trust store of its own: nothing is read from or written to the user's cache."""
    monkeypatch.setenv("SAFE_ENCODERS_TRUST_DIR", str(tmp_path_factory.mktemp("trust")))
