"""Files written atomically: a temporary file beside the target, renamed onto it.

Every file geoseg writes (class rasters and their side-cars, area CSVs, scores,
bundles) goes through here, so an error, Ctrl-C or SIGTERM leaves the target as it
was (a SIGKILL can leave a hidden ``.NAME.geoseg-tmp-*`` file, never the target).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

__all__ = ["AtomicOutput", "write_atomic"]


class AtomicOutput:
    """A temporary path beside ``target``, renamed onto it by :meth:`commit`.

    GDAL side-car files (``.aux.xml``) and a ``.qml`` style follow the main file.
    :meth:`discard` removes everything, so a failed or cancelled run never leaves a
    half-written file at the target path.
    """

    SIDECARS = (".aux.xml", ".qml")

    def __init__(self, target: str | os.PathLike):
        self.target = Path(target)
        tag = uuid.uuid4().hex[:8]
        self.tmp = self.target.with_name(f".{self.target.stem}.geoseg-tmp-{tag}{self.target.suffix}")
        self.extra: list[Path] = []

    def scratch(self, suffix: str) -> Path:
        """Another temporary file beside the target (removed by commit/discard)."""
        p = self.tmp.with_name(self.tmp.stem + f"-{len(self.extra)}{suffix}")
        self.extra.append(p)
        return p

    @staticmethod
    def _sidecar(base: Path, ext: str) -> Path:
        return base.with_name(base.name + ext) if ext == ".aux.xml" else base.with_suffix(ext)

    def commit(self) -> Path:
        for ext in self.SIDECARS:
            s = self._sidecar(self.tmp, ext)
            t = self._sidecar(self.target, ext)
            if s.exists():
                os.replace(s, t)
            elif t.exists() and ext == ".aux.xml":
                t.unlink()  # a stale side-car of an overwritten output would describe old data
        os.replace(self.tmp, self.target)
        self._cleanup_extra()
        return self.target

    def discard(self) -> None:
        for p in [self.tmp] + [self._sidecar(self.tmp, e) for e in self.SIDECARS]:
            p.unlink(missing_ok=True)
        self._cleanup_extra()

    def _cleanup_extra(self) -> None:
        for p in self.extra:
            for q in (p, p.with_name(p.name + ".aux.xml")):
                q.unlink(missing_ok=True)


def write_atomic(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write ``data`` (text or bytes) to ``path`` atomically; returns the path."""
    out = AtomicOutput(path)
    try:
        if isinstance(data, bytes):
            out.tmp.write_bytes(data)
        else:
            out.tmp.write_text(data)
        os.replace(out.tmp, out.target)
    finally:
        out.discard()
    return out.target
