"""Running geoseg from QGIS: find it, then run it as a child process speaking the
JSON-lines protocol of ``geoseg --progress jsonl`` (one event per line on stdout).

geoseg runs in its own Python environment, never inside QGIS: QGIS's Python (Debian:
numpy 1.24) cannot import TensorFlow 2.21, and TensorFlow loaded into QGIS crashes it
(sqlite symbols). The child gets a clean environment (no QGIS ``PYTHONPATH``,
``PROJ_*``, ``GDAL_*``), its progress goes to the Processing feedback, and cancel
terminates it (geoseg then removes its partial outputs and exits with code 130).

Where geoseg is looked for, in order:

1. the Processing setting *geoseg executable* (Processing ▸ Options ▸ Providers ▸ geoseg);
2. the environment variable ``GEOSEG_EXECUTABLE``;
3. ``geoseg`` on ``PATH``;
4. ``.venv/bin/geoseg`` of the geoseg checkout this plugin is run from.

Each may name the ``geoseg`` command or a Python interpreter that has geoseg installed
(run as ``python -m geoseg_cli``). A handshake (``geoseg version --json``, which loads
no TensorFlow) checks it before the first run; its answer is kept for the session.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path

from qgis.core import QgsProcessingException

PROTOCOL = 1
SETTING = "GEOSEG_EXECUTABLE"
ENV_VAR = "GEOSEG_EXECUTABLE"
#: Environment variables of the QGIS process that must not reach geoseg's Python
DROP_ENV = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONEXECUTABLE", "PYTHONUSERBASE",
            "GDAL_DATA", "GDAL_DRIVER_PATH", "GDAL_PLUGINS", "PROJ_LIB", "PROJ_DATA", "GDAL_SKIP",
            "LD_PRELOAD", "VIRTUAL_ENV")
INSTALL_HINT = ("install geoseg (in a geoseg checkout: bash scripts/bootstrap.sh, which makes .venv/bin/geoseg), "
                "then set Processing ▸ Options ▸ Providers ▸ geoseg ▸ 'geoseg executable' to that geoseg command "
                f"(or to the Python that has geoseg), or set the environment variable {ENV_VAR}")
TERMINATE_GRACE_S = 10.0
POLL_S = 0.1

_handshakes: dict[tuple[str, ...], dict] = {}


def clean_env() -> dict[str, str]:
    """The environment for geoseg's process: QGIS's Python, GDAL and PROJ settings removed."""
    env = {k: v for k, v in os.environ.items()
           if k not in DROP_ENV and not k.startswith("QGIS_") and not k.startswith("PYQGIS")}
    env.update(PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8", TF_CPP_MIN_LOG_LEVEL="2")
    return env


def command_for(path: str) -> list[str]:
    """The command line that starts geoseg from a setting's value: a ``geoseg``
    executable, or a Python interpreter with geoseg installed."""
    name = Path(path).name.lower()
    if name.startswith("python"):
        return [path, "-m", "geoseg_cli"]
    return [path]


def _checkout_candidate() -> str | None:
    repo = Path(__file__).resolve().parents[2]  # <repo>/qgis_plugin/geoseg_qgis/runner.py
    exe = repo / ".venv" / "bin" / "geoseg"
    return str(exe) if exe.is_file() and (repo / "geoseg" / "__init__.py").is_file() else None


def configured_setting() -> str:
    try:
        from processing.core.ProcessingConfig import ProcessingConfig
    except ImportError:  # Processing plugin not loaded
        return ""
    return (ProcessingConfig.getSetting(SETTING) or "").strip()


def handshake(cmd: list[str], timeout: float = 120.0) -> dict:
    """Ask ``cmd`` for its version (no TensorFlow loaded); raise with the reason when
    it is not a working geoseg of this protocol."""
    key = tuple(cmd)
    if key in _handshakes:
        return _handshakes[key]
    try:
        proc = subprocess.run([*cmd, "version", "--json"], capture_output=True, text=True, env=clean_env(),
                              timeout=timeout, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise QgsProcessingException(f"geoseg not found at {cmd[0]}; {INSTALL_HINT}") from None
    except PermissionError:
        raise QgsProcessingException(f"{cmd[0]} is not executable; {INSTALL_HINT}") from None
    except subprocess.TimeoutExpired:
        raise QgsProcessingException(f"{' '.join(cmd)} did not answer within {timeout:.0f} s") from None
    except OSError as e:
        raise QgsProcessingException(f"cannot run {cmd[0]}: {e.strerror or e}; {INSTALL_HINT}") from None
    info = None
    for line in reversed(proc.stdout.splitlines()):
        try:
            info = json.loads(line)
            break
        except ValueError:
            continue
    if proc.returncode != 0 or not isinstance(info, dict) or "geoseg" not in info:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise QgsProcessingException(f"{' '.join(cmd)} is not a working geoseg ({tail}); {INSTALL_HINT}")
    if info.get("protocol") != PROTOCOL:
        raise QgsProcessingException(
            f"{cmd[0]} is geoseg {info.get('geoseg')} speaking protocol {info.get('protocol')}; this plugin "
            f"needs protocol {PROTOCOL}: install the plugin that comes with that geoseg version")
    _handshakes[key] = info
    return info


def find_geoseg() -> list[str]:
    """The command that runs geoseg (see the module docstring for the search order)."""
    for origin, value in (("the Processing setting 'geoseg executable'", configured_setting()),
                          (f"the environment variable {ENV_VAR}", os.environ.get(ENV_VAR, "").strip())):
        if value:
            cmd = command_for(value)
            try:
                handshake(cmd)
            except QgsProcessingException as e:
                raise QgsProcessingException(f"{origin} is {value!r}: {e}") from None
            return cmd
    for value in (shutil.which("geoseg"), _checkout_candidate()):
        if value:
            cmd = command_for(value)
            handshake(cmd)
            return cmd
    raise QgsProcessingException(f"geoseg was not found (no setting, no {ENV_VAR}, no geoseg on PATH); "
                                 f"{INSTALL_HINT}")


class Run:
    """One geoseg child process, read event by event.

    The reader threads only queue lines; the Processing feedback is called from the
    thread that runs the algorithm. Handlers are bound methods kept on the object
    (QGIS crashes on temporary lambdas passed to some of its callbacks).
    """

    def __init__(self, args: list[str], feedback, cmd: list[str] | None = None, progress_span=(0.0, 100.0)):
        self.args = list(args)
        self.feedback = feedback
        self.cmd = cmd or find_geoseg()
        self.span = progress_span
        self.events: queue.Queue = queue.Queue()
        self.stderr_tail: list[str] = []
        self.result: dict | None = None
        self.error: str | None = None
        self.cancelled = False
        self.progress = self.span[0]

    def _read_stdout(self, stream) -> None:
        for line in stream:
            self.events.put(("out", line))
        self.events.put(("eof", None))

    def _read_stderr(self, stream) -> None:
        for line in stream:
            self.events.put(("err", line))

    def _handle(self, kind: str, line: str) -> None:
        fb = self.feedback
        if kind == "err":
            text = line.rstrip()
            if text:
                self.stderr_tail = (self.stderr_tail + [text])[-20:]
                if fb is not None:
                    fb.pushDebugInfo(text)
            return
        try:
            ev = json.loads(line)
        except ValueError:
            if fb is not None and line.strip():
                fb.pushDebugInfo(line.rstrip())
            return
        kind = ev.get("event")
        if kind == "progress" and ev.get("total"):
            lo, hi = self.span
            pct = lo + (hi - lo) * min(1.0, ev["done"] / ev["total"])
            if pct > self.progress:  # monotonic, whatever the child's stages
                self.progress = pct
                if fb is not None:
                    fb.setProgress(pct)
        elif kind == "log" and fb is not None:
            level, msg = ev.get("level"), ev.get("message", "")
            if level in ("warning", "error", "critical"):
                fb.pushWarning(msg)
            elif level == "debug":
                fb.pushDebugInfo(msg)
            else:
                fb.pushInfo(msg)
        elif kind == "result":
            self.result = ev
        elif kind == "error":
            self.error = ev.get("message")
        elif kind == "cancelled":
            self.cancelled = True

    def run(self) -> dict:
        """Run to the end; the ``result`` event, or QgsProcessingException with
        geoseg's one-line message ("cancelled" after a cancel)."""
        fb = self.feedback
        argv = [*self.cmd, "--progress", "jsonl", *self.args]
        if fb is not None:
            fb.pushCommandInfo(" ".join(argv))
        try:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                    text=True, encoding="utf-8", errors="replace", env=clean_env(), bufsize=1)
        except OSError as e:
            raise QgsProcessingException(f"cannot start geoseg ({self.cmd[0]}): {e.strerror or e}") from None
        readers = [threading.Thread(target=self._read_stdout, args=(proc.stdout,), daemon=True),
                   threading.Thread(target=self._read_stderr, args=(proc.stderr,), daemon=True)]
        for t in readers:
            t.start()
        terminated_at = None
        eof = False
        while True:
            try:
                kind, line = self.events.get(timeout=POLL_S)
                if kind == "eof":
                    eof = True
                else:
                    self._handle(kind, line)
            except queue.Empty:
                pass
            if fb is not None and fb.isCanceled() and terminated_at is None and proc.poll() is None:
                proc.terminate()  # geoseg: SIGTERM = Ctrl-C, targets left as they were, exit code 130
                terminated_at = time.monotonic()
            if terminated_at is not None and proc.poll() is None \
                    and time.monotonic() - terminated_at > TERMINATE_GRACE_S:
                proc.kill()
            if eof and proc.poll() is not None:
                break
        proc.wait()
        for t in readers:
            t.join(timeout=5)
        for stream in (proc.stdout, proc.stderr):
            stream.close()
        while not self.events.empty():
            kind, line = self.events.get_nowait()
            if kind != "eof":
                self._handle(kind, line)
        if self.result is not None:
            pass  # geoseg sends its result once its outputs are in place: a late cancel changes nothing
        elif terminated_at is not None or proc.returncode == 130 or self.cancelled:
            # a plain QgsProcessingException: QGIS shows its message (a subclass gets a traceback)
            raise QgsProcessingException("geoseg: cancelled; no output was written")
        elif self.error:
            raise QgsProcessingException(self.error.removeprefix("Error: "))
        elif proc.returncode < 0:
            raise QgsProcessingException(f"geoseg was killed by signal {-proc.returncode} (out of memory?) before it "
                                         "finished; see the log for its last lines")
        else:
            errors = [ln for ln in self.stderr_tail if ln.startswith("Error")]
            msg = errors[-1] if errors else f"geoseg stopped with exit code {proc.returncode} without a result"
            raise QgsProcessingException(msg.removeprefix("Error: "))
        if fb is not None:
            fb.setProgress(self.span[1])
        return self.result


def run_geoseg(args: list[str], feedback, progress_span=(0.0, 100.0)) -> dict:
    """Run ``geoseg --progress jsonl ARGS...`` and return its ``result`` event."""
    return Run(args, feedback, progress_span=progress_span).run()


def core_importable() -> bool:
    """Whether the geoseg core (areas, vectorize: no TensorFlow) can run inside QGIS's
    own Python (true when QGIS runs from geoseg's environment; not on stock QGIS)."""
    try:
        import geoseg.areas  # noqa: F401
        import geoseg.vectorize  # noqa: F401
        import rasterio
    except Exception:  # noqa: BLE001  (ImportError, or a binary/numpy mismatch)
        return False
    major, minor = (int(p) for p in rasterio.__version__.split(".")[:2])
    return (major, minor) >= (1, 4)
