"""Runs many careconcile command lines, each in a process of its own, for the fuzz corpus.

Starting Python and importing careconcile takes about 0.5 s of CPU, which hundreds of cases
cannot afford on two busy cores. So this process imports the CLI once, runs a few good
command lines to warm it, and forks a child per job: each child is a real process that
runs ``reconciler.cli.main(argv)`` as the console script does, with its own stdout and
stderr (files), an address-space limit (RLIMIT_AS), a CPU-time limit (RLIMIT_CPU: a busy
machine must not fail a case), and a wall-clock deadline after which the parent kills it
(a case that waits forever uses no CPU). An exception that escapes ``main`` prints a
traceback and exits 1, as Python does for the console script.

Reads a JSON object from stdin:

- ``jobs``: each ``id``, ``argv``, ``cwd``, ``call`` (``cli``, or ``inventory`` for the
  admin-mode inventory parser, which no command reads from a file), and optionally its own
  ``cpu`` and ``wall``;
- ``warm``: jobs run once in this process first, their outcome ignored;
- ``workers``, ``cpu`` (seconds of CPU time), ``wall`` (seconds), ``memory`` (bytes).

Writes a JSON list to stdout: per job its ``id``, ``code`` (the exit code, or minus the
signal that ended it), ``seconds`` (wall time), ``cpu_seconds``, ``timed_out``,
``maxrss_kib`` (what wait4 reports), ``stdout``, ``stderr``."""

from __future__ import annotations

import gc
import json
import os
import resource
import signal
import sys
import tempfile
import time
import traceback

from reconciler.cli import main as cli_main
from reconciler.errors import CareconcileError, exit_code_for


def _inventory(argv: list[str]) -> int:
    """The admin-mode inventory parser on a file's text, as it gets a ConfigMap's value."""
    from reconciler.core.admin import parse_inventory
    from reconciler.core.render import printable

    (path,) = argv
    with open(path, "rb") as handle:
        text = handle.read().decode("utf-8", "replace")  # a ConfigMap's value is always text
    try:
        parse_inventory(text, source=f"ConfigMap corpus/{os.path.basename(path)}")
    except CareconcileError as exc:
        print(f"careconcile: error: {printable(str(exc))}", file=sys.stderr)
        return exit_code_for(exc)
    print("a valid inventory")
    return 0


CALLS = {"cli": cli_main, "inventory": _inventory}


def _child(job: dict, out: str, err: str, memory: int, cpu: float) -> None:
    code = 1
    try:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        seconds = int(cpu) + 1  # SIGXCPU at the soft limit; the parent compares the exact time
        resource.setrlimit(resource.RLIMIT_CPU, (seconds, seconds + 1))
        os.chdir(job["cwd"])
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(os.open(out, os.O_WRONLY), 1)
        os.dup2(os.open(err, os.O_WRONLY), 2)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        try:
            code = CALLS[job.get("call", "cli")](job["argv"])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:  # noqa: BLE001 - what Python would print for the console script
            traceback.print_exc()
            code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code if isinstance(code, int) else 1)


def run(request: dict) -> list[dict]:
    jobs = list(request["jobs"])
    workers, wall, cpu, memory = request["workers"], request["wall"], request["cpu"], request["memory"]
    results: dict[str, dict] = {}
    running: dict[int, tuple[dict, float, str, str]] = {}
    scratch = tempfile.mkdtemp(prefix="careconcile-corpus-")
    pending = list(reversed(jobs))
    while pending or running:
        while pending and len(running) < workers:
            job = pending.pop()
            out, err = (os.path.join(scratch, f"{len(results) + len(running)}.{n}") for n in ("out", "err"))
            for name in (out, err):
                open(name, "wb").close()
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                _child(job, out, err, memory, job.get("cpu", cpu))
            running[pid] = (job, time.monotonic(), out, err)
        pid, status, usage = os.wait4(-1, os.WNOHANG)
        now = time.monotonic()
        if pid == 0:
            for other, (job, started, _, _) in running.items():
                if now - started > job.get("wall", wall) and not job.get("killed"):
                    job["killed"] = True
                    os.kill(other, signal.SIGKILL)
            time.sleep(0.002)
            continue
        job, started, out, err = running.pop(pid)
        with open(out, "rb") as o, open(err, "rb") as e:
            stdout, stderr = o.read(), e.read()
        os.unlink(out)
        os.unlink(err)
        results[job["id"]] = {
            "id": job["id"], "code": os.waitstatus_to_exitcode(status), "seconds": round(now - started, 3),
            "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 3),
            "timed_out": bool(job.get("killed")), "maxrss_kib": usage.ru_maxrss,
            "stdout": stdout.decode("utf-8", "backslashreplace"), "stderr": stderr.decode("utf-8", "backslashreplace"),
        }
    os.rmdir(scratch)
    return [results[job["id"]] for job in jobs]


def _warm(warm: list[dict]) -> None:
    """Run a few good command lines once in this process before the forks, so that what
    every child would otherwise build again (the parser, the schemas, pydantic's and the
    YAML loader's lazily built parts) is there already, and the children differ only in
    the work of their case."""
    import contextlib
    import io

    for job in warm:
        os.chdir(job["cwd"])
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            try:
                CALLS[job.get("call", "cli")](job["argv"])
            except BaseException:  # noqa: BLE001 - warming only; the jobs themselves are checked
                pass
    gc.collect()
    gc.freeze()  # the objects so far are never collected in the children: fewer pages copied


if __name__ == "__main__":
    request = json.load(sys.stdin)
    _warm(request.get("warm", []))
    json.dump(run(request), sys.stdout)
