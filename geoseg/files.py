"""Files written atomically: a temporary file beside the target, renamed onto it.

Every file geoseg writes (class rasters and their side-cars, area CSVs, scores,
bundles) goes through here, so an error, Ctrl-C or SIGTERM leaves the target as it
was (a SIGKILL can leave a hidden ``.NAME.geoseg-tmp-*`` file, never the target).

Temporary names carry this host and process (:func:`temp_tag`), so the next run into
the same folder removes what a killed run left (:func:`sweep_stale`): files of a
process that no longer runs on this host at once, any other after a day untouched.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
import socket
import time
from pathlib import Path
from typing import Optional, Sequence

__all__ = ["AtomicOutput", "write_atomic", "place", "place_all", "temp_tag", "sweep_stale", "STALE_AFTER_S"]

#: A temporary file or folder untouched this long is stale whoever made it.
STALE_AFTER_S = 24 * 3600
def _pid_space() -> str:
    """Who can tell whether a pid is alive: this kernel's boot and this pid namespace
    (containers on one host share the boot id but not the namespace; machines sharing a
    file system differ in boot id). Hostnames are not enough (equal in sidecars)."""
    ident = socket.gethostname()
    for f in ("/proc/sys/kernel/random/boot_id", "/proc/self/ns/pid"):
        try:
            ident += "|" + (os.readlink(f) if f.endswith("/pid") else Path(f).read_text().strip())
        except OSError:
            ident += "|?"
    return hashlib.sha1(ident.encode()).hexdigest()[:10]


_HOST = _pid_space()
_STALE = re.compile(r"^\..+\.(?:geoseg-tmp|tile-new|tile-old)-(?:(?P<host>[0-9a-f]{10})p(?P<pid>\d+)r)?[0-9a-f]+")
_swept: set[Path] = set()


def temp_tag() -> str:
    """A unique tag for a temporary name: this host, this process, a random part."""
    return f"{_HOST}p{os.getpid()}r{secrets.token_hex(4)}"


def _alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process there: age decides
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def sweep_stale(folder: str | os.PathLike, *, force: bool = False) -> list[Path]:
    """Remove the temporary files and folders geoseg left in ``folder`` when a run was
    killed (SIGKILL, power loss): those of a process gone from this host, and any
    untouched for :data:`STALE_AFTER_S`. Once per folder and process unless ``force``."""
    d = Path(folder).absolute()
    if d in _swept and not force:
        return []
    _swept.add(d)
    removed = []
    try:
        entries = list(os.scandir(d))
    except OSError:
        return removed
    now = time.time()
    for e in entries:
        m = _STALE.match(e.name)
        if not m:
            continue
        try:
            age = now - e.stat(follow_symlinks=False).st_mtime
        except OSError:
            continue
        mine_dead = m["host"] == _HOST and m["pid"] is not None and int(m["pid"]) != os.getpid() \
            and not _alive(int(m["pid"]))
        if not (mine_dead or age > STALE_AFTER_S):
            continue
        p = Path(e.path)
        try:
            if e.is_dir(follow_symlinks=False):
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(p)
        except OSError:
            pass
    return removed


class AtomicOutput:
    """A temporary path beside ``target``, renamed onto it by :meth:`commit`.

    GDAL side-car files (``.aux.xml``) and a ``.qml`` style follow the main file.
    :meth:`discard` removes everything, so a failed or cancelled run never leaves a
    half-written file at the target path.
    """

    SIDECARS = (".aux.xml", ".qml")

    def __init__(self, target: str | os.PathLike, overwrite: bool = True):
        self.target = Path(target)
        self.overwrite = overwrite
        sweep_stale(self.target.parent)
        self.tmp = self.target.with_name(f".{self.target.stem}.geoseg-tmp-{temp_tag()}{self.target.suffix}")
        self.extra: list[Path] = []

    def scratch(self, suffix: str) -> Path:
        """Another temporary file beside the target (removed by commit/discard)."""
        p = self.tmp.with_name(self.tmp.stem + f"-{len(self.extra)}{suffix}")
        self.extra.append(p)
        return p

    @staticmethod
    def _sidecar(base: Path, ext: str) -> Path:
        return base.with_name(base.name + ext) if ext == ".aux.xml" else base.with_suffix(ext)

    def moves(self) -> list[Move]:
        """What :meth:`commit` places, for :func:`place_all`: the file (exclusively
        without ``overwrite``: it decides which run wins), its ``.qml`` (likewise) and
        its ``.aux.xml`` (always this file's: replaced, or a stale one removed)."""
        moves = [(self.tmp, self.target, not self.overwrite)]
        for ext in self.SIDECARS:
            s = self._sidecar(self.tmp, ext)
            t = self._sidecar(self.target, ext)
            if s.exists():
                moves.append((s, t, not self.overwrite and ext != ".aux.xml"))
            elif ext == ".aux.xml" and os.path.lexists(t):
                moves.append((None, t, False))  # it would describe old data
        return moves

    def commit(self, keep_extra: bool = False) -> Path:
        """Put the file and its side-cars in place, all or nothing (:func:`place_all`).
        Without ``overwrite`` the target is created exclusively: if another run put a
        file there meanwhile, this one raises :class:`~geoseg.errors.OutputExistsError`
        and the other's file stays. ``keep_extra``: leave the :meth:`scratch` files for
        the caller to place."""
        place_all(self.moves())
        if not keep_extra:
            self.cleanup_scratch()
        return self.target

    def discard(self) -> None:
        for p in [self.tmp] + [self._sidecar(self.tmp, e) for e in self.SIDECARS]:
            p.unlink(missing_ok=True)
        self.cleanup_scratch()

    def cleanup_scratch(self) -> None:
        """Remove the :meth:`scratch` files still here (those not placed by the caller)."""
        for p in self.extra:
            for q in (p, p.with_name(p.name + ".aux.xml")):
                q.unlink(missing_ok=True)


#: One output to place: (temporary file, target, exclusive). A temporary file of None
#: removes the target (a stale side-car); exclusive never replaces an existing file.
Move = tuple[Optional[Path], Path, bool]


def _exists_error(target: Path) -> Exception:
    from .errors import OutputExistsError  # noqa: PLC0415
    return OutputExistsError(f"output exists: {target} (another run wrote it meanwhile)", option="overwrite")


def _ident(p: Path) -> tuple[int, int] | None:
    try:
        st = os.lstat(p)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def place(tmp: Path, target: Path, overwrite: bool) -> None:
    """Rename ``tmp`` onto ``target``; without ``overwrite`` never onto an existing
    file (a hard link is created exclusively, then the temporary name removed)."""
    place_all([(tmp, target, not overwrite)])


def place_all(moves: Sequence[Move]) -> list[Path]:
    """Place every output of one run, all or nothing: if one cannot be placed (an
    exclusive target another run created meanwhile, an OS error, a signal), those
    already placed are taken back — a replaced file restored, a created one removed
    (only while it is still the file this run put there) — and the error raised.

    An exclusive target is claimed with a hard link (fails if the name exists), else,
    on file systems without hard links, checked and renamed. A replaced file is kept
    under a hidden name (a hard link, else a rename) until all are placed. Signals
    wait until the end (:func:`geoseg.progress.shielded`)."""
    from .progress import note_written, shielded  # noqa: PLC0415
    done: list[tuple[Path, Path | None, tuple | None]] = []   # target, backup, identity of what we put
    linked: list[Path] = []   # temporary names still to remove (hard-linked to their target)
    with shielded():
        try:
            for tmp, target, exclusive in moves:
                target = Path(target)
                if exclusive:
                    if tmp is None:
                        raise ValueError("an exclusive move needs a file")
                    done.append((target, None, None))
                    if _claim(Path(tmp), target):
                        linked.append(Path(tmp))
                    done[-1] = (target, None, _ident(target))
                    continue
                backup = None
                if os.path.lexists(target) and not (target.is_dir() and not target.is_symlink()):
                    backup = _backup(target)   # (a folder is never replaced: the rename fails)
                done.append((target, backup, None))
                if tmp is None:
                    if backup is None or os.path.lexists(target):
                        target.unlink(missing_ok=True)
                else:
                    os.replace(tmp, target)
                    done[-1] = (target, backup, _ident(target))
        except BaseException:
            _take_back(done)
            raise
        for p in linked + [backup for _, backup, _ in done if backup is not None]:
            try:
                p.unlink(missing_ok=True)
            except OSError:   # all is placed; a hidden leftover is swept by a later run
                pass
    placed = [t for (tmp, t, _), _ in zip(moves, done) if tmp is not None]
    note_written(placed)
    return placed


def _claim(tmp: Path, target: Path) -> bool:
    """Put ``tmp`` at ``target`` unless a file is there; True when linked (``tmp``
    still to remove), False when renamed."""
    try:
        os.link(tmp, target, follow_symlinks=False)
        return True
    except FileExistsError:
        raise _exists_error(target) from None
    except OSError:  # a file system without hard links: check, then rename
        if os.path.lexists(target):
            raise _exists_error(target) from None
        os.replace(tmp, target)
        return False


def _backup(target: Path) -> Path:
    """Keep the file at ``target`` under a hidden name beside it (until the run's outputs
    are all placed): a hard link, else (no hard links) the file moved there."""
    bak = target.with_name(f".{target.name}.geoseg-tmp-{temp_tag()}.bak")
    try:
        os.link(target, bak, follow_symlinks=False)
    except OSError:
        os.replace(target, bak)
    return bak


def _take_back(done: list[tuple[Path, Path | None, tuple | None]]) -> None:
    """Undo :func:`place_all`'s moves so far, last first; a file at a target that is not
    the one this run put there is left alone."""
    for target, backup, ours in reversed(done):
        try:
            if ours is not None and _ident(target) == ours:
                target.unlink()
            if backup is not None:
                if _ident(target) is None:
                    os.replace(backup, target)
                else:  # the original is still there (the same file), or another run's: keep it
                    backup.unlink(missing_ok=True)
        except OSError:
            pass


def write_atomic(path: str | os.PathLike, data: str | bytes, overwrite: bool = True) -> Path:
    """Write ``data`` (text or bytes) to ``path`` atomically; returns the path. Without
    ``overwrite`` an existing file at ``path`` is never replaced."""
    out = AtomicOutput(path, overwrite)
    try:
        if isinstance(data, bytes):
            out.tmp.write_bytes(data)
        else:
            out.tmp.write_text(data)
        place(out.tmp, out.target, overwrite)
    finally:
        out.discard()
    return out.target
