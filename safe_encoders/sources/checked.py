"""A memo of checkpoint files already checked: the digest of each tensor that passed, keyed by the file's identity.

`EncoderSource.validate` reads every tensor it will copy (floating point, finite, its digest): a pass
over the checkpoint that costs as much as loading it. When a pass finds nothing wrong, the digests
are kept in the trust folder (`trust_dir()/checked/`, outside every pipeline, written atomically)
under the file's path and identity: device, inode, size, mtime_ns and ctime_ns. A later check of
the same file with the same identity takes those digests instead of reading it again; any other
identity is a miss. Sound because a write to a file or its replacement changes that identity (ctime
cannot be set from user space) on a local filesystem (`LOCAL_FILESYSTEMS`, an allow-list: on a network
or FUSE filesystem the timestamps are whatever the other side reports, so nothing is remembered); a
file changed less than `SETTLE_NS` before its check began is not recorded, since timestamps come from
a coarse clock and a second write within the same tick could leave them unchanged (git's "racy" rule).
Writes through a shared writable memory map of the file can escape timestamps for a while: a process
that can write the checkpoint can change what a later `make_safe` installs (`is_safe(verify=True)`
re-hashes the live weights and is not fooled).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import json
import logging
import os
import sys
import time
from pathlib import Path

MEMO_FORMAT = 1
SETTLE_NS = 2_000_000_000  # a file whose ctime is newer than this before its check is not remembered
# statfs magic numbers of local filesystems, whose ctime this kernel sets on every change. On any other (NFS,
# SMB, FUSE such as sshfs: a server or a daemon reports the timestamps; vfat: no change time) nothing is remembered.
LOCAL_FILESYSTEMS = {
    0xEF53: "ext2/3/4",
    0x58465342: "xfs",
    0x9123683E: "btrfs",
    0x01021994: "tmpfs",
    0x794C7630: "overlayfs",
    0x2FC12FC1: "zfs",
    0xF2F52010: "f2fs",
}
logger = logging.getLogger("safe_encoders")


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def local_filesystem(path: Path) -> bool:
    """Whether `path` is on a filesystem of `LOCAL_FILESYSTEMS` (Linux statfs); False when it cannot tell."""
    if not sys.platform.startswith("linux"):
        return False
    buffer = ctypes.create_string_buffer(512)  # struct statfs: f_type (a C long) comes first
    try:
        if _libc().statfs(os.fsencode(path), buffer) != 0:
            return False
    except (OSError, AttributeError):
        return False
    return ctypes.c_long.from_buffer(buffer).value & 0xFFFFFFFF in LOCAL_FILESYSTEMS


def _memo_path(path: Path) -> Path:
    from ..trust.store import trust_dir  # lazy: the trust package imports the sources

    name = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:32]
    return trust_dir() / "checked" / f"{name}.json"


def remembered(path: Path, identity: tuple[int, ...]) -> dict[str, str]:
    """{key in the file: digest} of the tensors of `path` checked while it had `identity` ({} if none)."""
    if not local_filesystem(path):
        return {}
    with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
        data = json.loads(_memo_path(path).read_text(encoding="utf-8"))
        same_file = data.get("format") == MEMO_FORMAT and data.get("path") == str(path.resolve())
        if same_file and tuple(data.get("identity", ())) == identity:
            return {str(key): str(value) for key, value in data["digests"].items()}
    return {}


def remember(path: Path, identity: tuple[int, ...], digests: dict[str, str], checked_at_ns: int) -> None:
    """Keep `digests` ({key in the file: digest}) of `path`, checked from `checked_at_ns` on while the file had
    `identity` throughout; a file changed just before is not kept (see the module's docstring)."""
    if not digests or identity[4] > checked_at_ns - SETTLE_NS or not local_filesystem(path):
        return
    from ..atomic import atomic_write_text

    merged = {**remembered(path, identity), **digests}
    record = {"format": MEMO_FORMAT, "path": str(path.resolve()), "identity": list(identity), "digests": merged}
    try:
        atomic_write_text(_memo_path(path), json.dumps(record, sort_keys=True) + "\n")
    except OSError as error:  # a memo that cannot be written only costs a re-check next time
        logger.debug("safe_encoders: could not remember the check of %s: %s", path, error)


def now_ns() -> int:
    return time.time_ns()
