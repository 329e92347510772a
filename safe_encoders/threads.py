"""CPU threads for the commands: one thread count for torch and FAISS, and OpenMP threads that sleep when idle.

torch and FAISS each bring their own OpenMP runtime. By default an idle OpenMP thread spins for a while
before it sleeps, which is free on an idle machine and ruinous on a busy one: spinning threads of one
runtime take the cores the other runtime (or another process) needs, and short parallel regions (a
re-rank, a one-image forward) became 5-10x slower on a shared 2-core machine. `OMP_WAIT_POLICY=PASSIVE`
(libgomp) and `KMP_BLOCKTIME=0` (Intel / LLVM OpenMP) make them sleep at once; both are read when the
runtime starts (when torch is imported), so `safe_encoders/__init__.py` sets them first thing when the
process is one of the project's commands, unless the user's environment already says otherwise.

from safe_encoders.threads import configure_threads
configure_threads(args.threads)          # None: OMP_NUM_THREADS if set, else the CPUs this process may use
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Read by the OpenMP runtimes when they start; user settings win (setdefault).
OPENMP_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"}
COMMAND_MODULES = ("safe_encoders", "eval", "train")  # python -m NAME
COMMAND_SCRIPTS = ("safe-encoders",)  # console scripts


def launched_as_command(argv: list[str] | None = None, script: str | None = None) -> bool:
    """Whether this process is `python -m safe_encoders|eval|train ...` or the `safe-encoders` script."""
    argv = list(getattr(sys, "orig_argv", sys.argv) if argv is None else argv)
    script = sys.argv[0] if script is None and sys.argv else script or ""
    if Path(script).name in COMMAND_SCRIPTS:
        return True
    args = iter(argv[1:])
    for arg in args:
        if arg == "-m":
            return next(args, None) in COMMAND_MODULES
        if arg in ("-X", "-W"):  # options that take a value
            next(args, None)
        elif not arg.startswith("-") or arg == "-c":  # a script or -c: not one of ours
            return False
    return False


def set_openmp_env_defaults() -> dict[str, str]:
    """Set `OPENMP_ENV` where the environment does not set it; returns what was set. Effective only before
    the OpenMP runtimes start (before `import torch` / `import faiss`); harmless after."""
    added = {name: value for name, value in OPENMP_ENV.items() if name not in os.environ}
    os.environ.update(added)
    return added


def available_cpus() -> int:
    """The CPUs this process may run on (taskset / cgroup affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def configure_threads(threads: int | None = None) -> int:
    """Use `threads` CPU threads in torch and FAISS (None: `OMP_NUM_THREADS` if set, else `available_cpus()`);
    returns the count. torch's inter-op pool is left alone (it can only be set before it is first used)."""
    if threads is None:
        env = os.environ.get("OMP_NUM_THREADS", "").strip()
        threads = int(env) if env.isdigit() and int(env) > 0 else available_cpus()
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}.")
    import torch

    torch.set_num_threads(threads)
    faiss = sys.modules.get("faiss")
    if faiss is None:
        try:
            import faiss
        except ImportError:  # the search extra is optional
            faiss = None
    if faiss is not None:
        faiss.omp_set_num_threads(threads)
    return threads
