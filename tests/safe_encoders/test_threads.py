"""Thread policy of the commands: OpenMP env defaults set before torch starts, user settings kept, one count."""

import os
import subprocess
import sys

import pytest

from safe_encoders.cli import main
from safe_encoders.threads import launched_as_command

PROBE = """
import sys
sys.orig_argv = [sys.executable, "-m", "safe_encoders", "search"]  # as `python -m safe_encoders search`
import safe_encoders, os, torch
from safe_encoders.threads import configure_threads
order = list(sys.modules)
print(os.environ.get("OMP_WAIT_POLICY"), os.environ.get("KMP_BLOCKTIME"),
      order.index("safe_encoders.threads") < order.index("torch"))
import faiss
print(configure_threads(1), torch.get_num_threads(), faiss.omp_get_max_threads())
"""


def _probe(**env: str) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "KMP_BLOCKTIME")}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env, "OMP_NUM_THREADS": "2"},
                         capture_output=True, text=True, check=True)  # fmt: skip
    return out.stdout.split()


@pytest.mark.parametrize(
    ("argv", "script", "ours"),
    [
        (["python", "-m", "safe_encoders", "scan"], "-m", True),
        (["python", "-X", "utf8", "-m", "eval", "quality"], "-m", True),
        (["python", "-m", "train", "demo"], "-m", True),
        (["python", "-m", "pytest", "-m", "eval"], "-m", False),
        (["python", "-c", "import safe_encoders", "-m", "eval"], "-c", False),
        (["python", "myscript.py", "-m", "eval"], "myscript.py", False),
        (["/venv/bin/python", "/venv/bin/safe-encoders", "search"], "/venv/bin/safe-encoders", True),
    ],
)
def test_which_processes_are_commands(argv, script, ours):
    assert launched_as_command(argv, script) is ours


def test_command_sets_passive_openmp_before_torch_and_one_thread_count():
    policy, blocktime, before_torch, *counts = _probe()
    assert (policy, blocktime, before_torch) == ("PASSIVE", "0", "True")
    assert counts == ["1", "1", "1"]  # configure_threads(1): torch and FAISS's own OpenMP runtime


def test_user_environment_wins():
    policy, blocktime, *_ = _probe(OMP_WAIT_POLICY="ACTIVE")
    assert (policy, blocktime) == ("ACTIVE", "0")


def test_threads_option_is_validated(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--threads", "0", "search", "x", "--text", "y"])
    assert exit_info.value.code == 2
    assert "--threads" in capsys.readouterr().err
