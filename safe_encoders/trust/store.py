"""The trust store: the checkpoints this machine trusts, one human-readable JSON file per encoder.

It lives outside every pipeline (`trust_dir()`: `$SAFE_ENCODERS_TRUST_DIR`, else
`$XDG_CACHE_HOME/safe-encoders/trust`, else `~/.cache/safe-encoders/trust`), so a saved model cannot
write it. An entry is added by the user (`trust_checkpoint`, `safe-encoders trust`) or, for the
registry's own checkpoints, on their first download (trust on first use: the Hub repo id, its commit
and each file's sha256 are pinned). Each entry holds the digest of every tensor of the encoder in its
stored dtype and cast to each floating dtype an encoder runs in, so a model cast after the swap is
checked against the checkpoint cast the same way.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from ..atomic import atomic_write_text
from ..errors import CorruptCheckpointError
from ..registry import EncoderKind

TRUST_DIR_ENV = "SAFE_ENCODERS_TRUST_DIR"
STORE_FORMAT = 1
TrustedBy = Literal["registry", "user"]


def trust_dir() -> Path:
    """Where the trust store lives (read from the environment at each call)."""
    override = os.environ.get(TRUST_DIR_ENV)
    if override:
        return Path(override).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "safe-encoders" / "trust"


@dataclass(frozen=True)
class TrustEntry:
    """One trusted encoder.

    `tensors[dtype name][published name]` is `format.tensor_digest` of the tensor as stored
    (`stored_dtypes`) or cast to that dtype; `digest` is `format.combined_digest` of the stored ones
    (for one of our files, the file's own digest). `identities` are the source identities it was
    trusted under (a record's hint); `source` says where it came from (a path, or repo id + commit +
    per-file sha256 for a registry pin)."""

    kind: EncoderKind
    checkpoint: str
    trusted_by: TrustedBy
    digest: str
    tensors: dict[str, dict[str, str]]
    stored_dtypes: dict[str, str]
    config: dict[str, Any]
    source: dict[str, Any] = field(default_factory=dict)
    identities: tuple[str, ...] = ()
    trusted_at: str = ""

    @property
    def file_name(self) -> str:
        return f"{self.kind}-{self.digest.removeprefix('sha256:')[:32]}.json"

    def to_json(self) -> str:
        data = {"format": STORE_FORMAT, **asdict(self), "identities": list(self.identities)}
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, where: Path) -> TrustEntry:
        try:
            data = json.loads(text)
            if data.pop("format") != STORE_FORMAT:
                raise ValueError("unknown format")
            data["identities"] = tuple(data.get("identities", ()))
            entry = cls(**data)
        except (ValueError, TypeError, KeyError, AttributeError) as error:
            raise CorruptCheckpointError(
                f"Trust store entry {where} is damaged ({error!r}); delete it and trust the checkpoint again."
            ) from None
        if entry.kind not in ("text", "vision") or entry.trusted_by not in ("registry", "user"):
            raise CorruptCheckpointError(f"Trust store entry {where} has an unknown kind or trusted_by; delete it.")
        return entry

    def names(self) -> set[str]:
        return set(self.stored_dtypes)


class TrustStore:
    """The entries of one trust folder. Reads are cached by file (name, size, mtime), so checking an
    encoder many times does not re-parse the store."""

    _parsed: ClassVar[dict[Path, tuple[tuple[int, int], TrustEntry]]] = {}  # shared: the files are the truth

    def __init__(self, root: Path | None = None) -> None:
        self.root = root if root is not None else trust_dir()

    def entries(self, kind: EncoderKind | None = None) -> list[TrustEntry]:
        """Every entry (of `kind`), in file-name order. A damaged entry raises CorruptCheckpointError."""
        if not self.root.is_dir():
            return []
        found = []
        for path in sorted(self.root.glob("*.json")):
            stat = path.stat()
            stamp = (stat.st_size, stat.st_mtime_ns)
            cached = self._parsed.get(path)
            if cached is None or cached[0] != stamp:
                cached = (stamp, TrustEntry.from_json(path.read_text(encoding="utf-8"), path))
                self._parsed[path] = cached
            if kind is None or cached[1].kind == kind:
                found.append(cached[1])
        return found

    def add(self, entry: TrustEntry) -> Path:
        """Write `entry` atomically (replacing an entry of the same encoder); returns its file."""
        path = self.root / entry.file_name
        atomic_write_text(path, entry.to_json())
        return path

    def remove(self, entry: TrustEntry) -> None:
        (self.root / entry.file_name).unlink(missing_ok=True)
