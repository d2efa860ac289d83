"""Starts careconcile's command lines for the integration tests, each in a process of its own,
without paying Python's start-up and careconcile's imports each time.

A careconcile process spends about 0.55 s of CPU before it reads its first argument
(Python, pydantic's models, cryptography). The tests start it hundreds of times, the
kill loops of test_authorities.py 123 times in a row, on two busy cores. So each test
process keeps one server (this file, run as a script): it imports the CLI once and forks a
child per command line. The child is a real process with a pid of its own, its own
environment, working directory, stdin, stdout and stderr (files), and it runs
``reconciler.cli.main(argv)`` as ``python -m reconciler`` does, then Python's exit (its
threads joined, the atexit handlers run). A signal that ends it (the executor's test hook
SIGKILLs it) is its exit status, as subprocess reports it. tests/corpus/runner.py does the
same for the fuzz corpus.

The protocol, one JSON object per line: the test process sends ``id``, ``argv``, ``env``,
``cwd`` and the paths ``stdin``, ``stdout`` and ``stderr``; the server answers
``{"id", "pid"}`` once the child runs (``{"id", "error"}`` if it could not fork) and
``{"id", "exit"}`` (subprocess's returncode) once it ended. ``{"kill": id}`` SIGKILLs that
child if the server has not reaped it yet (so never another process that got its pid). The
server SIGKILLs its children and exits when its stdin closes (the test process is gone)."""

from __future__ import annotations

import atexit
import contextlib
import importlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import traceback
from concurrent.futures import Future
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAIN = str(ROOT / "reconciler" / "__main__.py")


def _child(request: dict) -> None:
    code = 1
    try:
        for fd, (name, flags) in enumerate((("stdin", os.O_RDONLY), ("stdout", os.O_WRONLY | os.O_TRUNC),
                                            ("stderr", os.O_WRONLY | os.O_TRUNC))):
            opened = os.open(request[name], flags)
            os.dup2(opened, fd)
            os.close(opened)
        try:
            os.chdir(request["cwd"])
            os.environ.clear()
            os.environ.update(request["env"])
            sys.argv = [MAIN, *request["argv"]]
            from reconciler.cli import main

            code = main(request["argv"])
        except SystemExit as exc:
            if exc.code is None or isinstance(exc.code, int):
                code = exc.code or 0
            else:  # as Python does with sys.exit("message")
                print(exc.code, file=sys.stderr)
                code = 1
        except BaseException:  # noqa: BLE001 - what Python prints for an uncaught exception
            traceback.print_exc()
            code = 1
        code = 0 if code is None else code
        threading._shutdown()  # as Python's exit does: wait for the threads that are not daemons
        atexit._run_exitfuncs()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code if isinstance(code, int) else 1)


def serve() -> None:
    importlib.import_module("reconciler.cli")  # once, before the forks

    children: dict[int, int] = {}  # pid: request id, until the child is reaped
    pending = b""
    closed = False

    def answer(message: dict) -> None:
        os.write(1, json.dumps(message).encode() + b"\n")

    def handle(request: dict) -> None:
        if "kill" in request:  # only a child not yet reaped: its pid is not anyone else's
            for pid, ident in children.items():
                if ident == request["kill"]:
                    os.kill(pid, signal.SIGKILL)
            return
        try:
            pid = os.fork()
        except OSError as exc:
            answer({"id": request["id"], "error": f"fork: {exc}"})
            return
        if pid == 0:
            _child(request)
        children[pid] = request["id"]
        answer({"id": request["id"], "pid": pid})

    while not closed or children:
        if not closed:
            ready, _, _ = select.select([0], [], [], 0.005 if children else None)
            if ready:
                data = os.read(0, 65536)
                closed = not data
                if closed:  # the test process is gone: nothing may go on changing its sandboxes
                    for pid in children:
                        os.kill(pid, signal.SIGKILL)
                pending += data
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    handle(json.loads(line))
        else:
            select.select([], [], [], 0.005)
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            if pid in children:
                answer({"id": children.pop(pid), "exit": os.waitstatus_to_exitcode(status)})


class Launcher:
    """The test process's end: one server, shared by the threads of the test process. The
    server's own errors go to its log file, named in the error a call then raises."""

    def __init__(self) -> None:
        descriptor, log = tempfile.mkstemp(prefix="careconcile-launcher-", suffix=".log")
        os.close(descriptor)
        self.log = Path(log)
        with self.log.open("wb") as log:
            self._server = subprocess.Popen([sys.executable, "-P", __file__], stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, stderr=log, cwd=ROOT)
        self._lock = threading.Lock()
        self._next = 0
        self._started: dict[int, Future] = {}
        self._ended: dict[int, Future] = {}
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        atexit.register(self._drop_empty_log)

    def _drop_empty_log(self) -> None:
        with contextlib.suppress(OSError):
            if self.log.stat().st_size == 0:
                self.log.unlink()

    def alive(self) -> bool:
        return self._server.poll() is None and self._reader.is_alive()

    def _read(self) -> None:
        try:
            for line in self._server.stdout:
                message = json.loads(line)
                with self._lock:
                    if "pid" in message:
                        self._started.pop(message["id"]).set_result(message["pid"])
                    elif "error" in message:
                        self._ended.pop(message["id"])
                        self._started.pop(message["id"]).set_exception(OSError(message["error"]))
                    else:
                        self._ended.pop(message["id"]).set_result(message["exit"])
        finally:
            with self._lock:  # the server is gone: nobody waits for it
                gone = RuntimeError(f"the careconcile launcher exited; its log: {self.log}")
                for future in (*self._started.values(), *self._ended.values()):
                    future.set_exception(gone)
                self._started.clear()
                self._ended.clear()

    def _send(self, message: dict) -> None:
        self._server.stdin.write(json.dumps(message).encode() + b"\n")
        self._server.stdin.flush()

    def run(self, argv: list[str], *, env: dict[str, str], cwd: Path, stdin: str,
            timeout: float) -> subprocess.CompletedProcess:
        """As ``subprocess.run([python, -m, reconciler, *argv], capture_output=True,
        text=True, ...)`` would: TimeoutExpired after SIGKILL if it runs past ``timeout``,
        and the child SIGKILLed whatever ends the wait early (pytest-timeout, Ctrl-C)."""
        with tempfile.TemporaryDirectory(prefix="careconcile-launch-") as scratch:
            paths = {name: Path(scratch) / name for name in ("stdin", "stdout", "stderr")}
            paths["stdin"].write_text(stdin)
            for name in ("stdout", "stderr"):
                paths[name].touch()
            started, ended = Future(), Future()
            with self._lock:
                self._next += 1
                ident = self._next
                self._started[ident], self._ended[ident] = started, ended
                self._send({"id": ident, "argv": [str(a) for a in argv], "env": env, "cwd": str(cwd),
                            **{name: str(path) for name, path in paths.items()}})
            try:
                started.result(timeout=60)
                code = ended.result(timeout=timeout)
            except BaseException as exc:
                with self._lock, contextlib.suppress(OSError):  # a server gone meanwhile killed nothing
                    if self.alive():
                        self._send({"kill": ident})
                if isinstance(exc, TimeoutError) and started.done() and not started.exception():
                    with contextlib.suppress(BaseException):
                        ended.result(timeout=60)
                    raise subprocess.TimeoutExpired(["careconcile", *argv], timeout, paths["stdout"].read_text(),
                                                    paths["stderr"].read_text()) from None
                raise
            return subprocess.CompletedProcess(["careconcile", *argv], code, paths["stdout"].read_text(),
                                               paths["stderr"].read_text())


_launcher: Launcher | None = None
_launcher_lock = threading.Lock()


def launcher() -> Launcher:
    """This test process's launcher, started on first use."""
    global _launcher
    with _launcher_lock:
        if _launcher is None or not _launcher.alive():
            _launcher = Launcher()
        return _launcher


if __name__ == "__main__":
    serve()
