"""Unit-test rewards for HumanEval- and MBPP-style rows, with every program run in a sandbox.

Reward ``code_unit_tests(prompts, completions, **columns)``: 1.0 if the row's tests passed against
the completion's function, else 0.0. ``code_unit_tests_partial`` (opt-in partial credit): the
fraction of the row's asserts that passed, each judged by the trusted checker as below.

Columns of a HumanEval row: ``test`` (defines ``check``), ``entry_point`` (the function name) and
the code prefix, taken from the column ``code_prefix``, else ``prompt`` (when called directly; TRL
does not pass the ``prompt`` column as a keyword), else the prompt itself (a string, or the last
message's content). It passes when ``check(candidate)`` runs to completion; for partial credit the
top-level statements of ``check`` holding an ``assert`` are scored one by one (``_code_units``).

An MBPP row has a non-empty ``test_list`` (``assert`` strings calling the function by name) and
an optional ``test_setup_code`` (trusted; run by the checker before the asserts and prepended to
the program, e.g. imports). Its code prefix is the ``code_prefix`` column or nothing (an MBPP
prompt is prose), its ``entry_point`` the column or else the first non-builtin function the asserts
call. Each assert is judged on its own; the row passes when all do. A batch may mix both layouts.

Program: ``prompt + completion`` (the completion continues the function body). If the completion
defines ``def <entry_point>(`` at the top level, or holds a Markdown code fence (the fenced block
defining the entry point, else the first Python block), that code is used instead, after the
prompt (so the prompt's imports and helper functions stay; a later ``def`` replaces the stub).
A prompt that is not valid Python on its own contributes only its ``import`` lines.

Design (threat model below)
---------------------------
The program and the test run in two different processes::

    trainer --stdin: job frame, then test frame (nonce)--> checker   (trusted: prompt helpers + test)
            <--stdout: one verdict line echoing the nonce--   | fork (before the test frame is read)
                                                              v
                                                           runner    (untrusted: the program)

The *checker* (``_sandbox_proc.py``, ``python -I -S -B``) reads the first frame (the program),
forks the *runner*, and only then reads the second frame (the test and a fresh random nonce), so
the runner never has either in memory. The runner sandboxes itself (below), closes every
descriptor but its two pipes, executes the program and serves calls to ``entry_point``. The
checker executes the prompt's helpers and the dataset's ``test`` and calls ``check(candidate)``,
where ``candidate`` forwards each call to the runner; arguments and results cross as plain data
(None, bool, int, float, complex, str, bytes, list, tuple, dict, set, frozenset) through a decoder
that builds nothing else. Success is decided only from the checker's verdict, written after
``check`` returned, on a pipe the runner never holds, and accepted only with the nonce. The
untrusted code therefore cannot reach ``check``, the test's builtins or modules, the ``assert``s or
the verdict channel; it can only answer calls. ``sys.exit(0)``, ``os._exit(0)``, patching
``check`` or builtins, printing or writing a "success" marker, returning an object whose ``__eq__``
is always true (or an ``int`` subclass): all of these stay inside the runner and score 0.

Isolation layers (probed once per process at first use, falling back layer by layer; one log
line says which are active, :func:`isolation` returns the same as a dict):

* every program in fresh processes in a new session, with a scrubbed environment (``PATH``,
  ``LANG``, ``HOME``/``TMPDIR`` = scratch), under ``python -I -S -B``, in a fresh temporary
  directory as cwd (removed afterwards); stdin is ``/dev/null``; stdout/stderr go to a pipe the
  checker drains, keeping at most ``max_output_bytes``;
* resource limits set by the runner before user code runs (hard = soft, so they cannot be raised):
  CPU seconds, address space, file size, open files, processes, no core files;
* when the trainer runs as root: the runner drops to an unprivileged per-worker uid/gid
  (:func:`sandbox_uid`, no supplementary groups). This makes ``RLIMIT_NPROC`` enforced (root
  ignores it) and the trainer's files unreadable, and keeps parallel programs apart;
* Landlock (Linux >= 5.13) when the kernel has it: writes only below the scratch directory (and
  ``/dev/null``), reads only of the Python installation and system libraries; ABI >= 4: TCP
  bind/connect denied; ABI >= 6: signals and abstract Unix sockets cannot leave the domain;
* namespaces via ``unshare``: network (only a down loopback: no network at all, not even to the
  trainer's localhost services); PID, with the checker as init, so every process of the program
  dies with it and the trainer's PIDs do not exist; mount, with a private ``/proc``, the system temp
  directory replaced by a size-limited tmpfs holding only the scratch directory, ``/run``,
  ``/dev/shm`` and ``/var/tmp`` replaced by empty read-only tmpfs (no host Unix sockets or temp
  files), and the standard library bind-mounted read-only into the scratch directory (the runner's
  uid may not be able to read the interpreter's own directory, e.g. below ``/root``). As non-root,
  a user namespace is added when the kernel allows one;
* a wall-clock timeout in the trainer kills the whole process group (and with it the namespaces);
  without a PID namespace, processes left under the sandbox uid are swept with ``kill -9 -1`` run as
  that uid. Without a mount namespace, the stdlib modules of ``SandboxConfig.preload`` that the
  program imports are imported before the uid drop.

Threat model and limits, honestly: the dataset (prompt helpers and tests) is trusted; the checker
runs it with the trainer's uid (inside the namespaces). The kernel is trusted: there is no seccomp
filter, so a kernel exploit, or side channels, are out of scope. The runner sees its own call
arguments (the test's inputs), as any function does, and can answer them any way it likes: the
sandbox decides *whether* the function's answers satisfy ``check``, not how they were computed.
``-S`` means no site-packages: programs may use the standard library only. Values that are not
plain data (generators, custom classes, functions) cannot be returned, and arguments are copies
(a test that inspects an argument mutated in place would fail). A lazy stdlib import works only
with the bind mount, or when the interpreter's directory is readable by the sandbox uid. Without
root or user namespaces, only the process, rlimit and Landlock layers remain; the log line names
what is missing, and ``SandboxConfig.require`` turns a missing layer into an error.

Per-assert scoring keeps these guarantees: a unit (one assert, or one statement of ``check``) is
executed in the checker, on values that came back through the plain-data decoder, and its outcome
is recorded there; the runner never holds the units, the list of outcomes or the verdict channel.
If the runner dies mid-test, the units judged so far stand and the rest fail; a program that runs
past the timeout scores 0.0 in both modes (no verdict arrives).

Counters (thread-safe, cumulative) are returned by :func:`metrics`: ``programs``, ``passed``,
``failed``, ``timeouts``, ``sandbox_errors`` (the sandbox itself failed; scored 0.0) and
``too_long`` (completions over ``max_program_chars``, scored 0.0 without running).
"""

from __future__ import annotations

import ast
import json
import logging
import os
import queue
import re
import secrets
import selectors
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ._code_units import UnitPlan, humaneval_plan, mbpp_entry_point, mbpp_plan
from ._common import column, completion_to_text

__all__ = [
    "code_unit_tests",
    "code_unit_tests_partial",
    "make_code_unit_tests",
    "SandboxConfig",
    "SandboxResult",
    "build_program",
    "extract_code",
    "run_check",
    "run_checks",
    "isolation",
    "sandbox_uid",
    "metrics",
    "reset_metrics",
]

logger = logging.getLogger(__name__)

_PROC_SCRIPT = str(Path(__file__).with_name("_sandbox_proc.py"))

_DEFAULT_PRELOAD = (
    "math", "cmath", "re", "string", "itertools", "functools", "collections", "collections.abc",
    "heapq", "bisect", "typing", "copy", "random", "hashlib", "statistics", "fractions", "decimal",
    "operator", "datetime", "json", "array", "dataclasses", "enum", "numbers", "textwrap",
    "unicodedata", "time", "struct", "binascii", "base64", "io", "types", "calendar", "sys", "os",
)  # fmt: skip


@dataclass(frozen=True)
class SandboxConfig:
    """Limits and knobs of the code sandbox (all per program)."""

    timeout_s: float = 10.0  # wall clock for the whole program + test
    cpu_s: int = 10  # RLIMIT_CPU of the runner
    memory_mb: int = 1024  # RLIMIT_AS of the runner
    max_procs: int = 8  # RLIMIT_NPROC of the runner's uid (processes and threads)
    file_mb: int = 16  # RLIMIT_FSIZE (largest file the program may write)
    open_files: int = 64  # RLIMIT_NOFILE
    scratch_mb: int = 64  # size of the tmpfs scratch directory (when a mount namespace is available)
    max_output_bytes: int = 8192  # of the program's stdout+stderr kept for diagnostics
    max_program_chars: int = 200_000  # longer completions score 0 without running
    max_workers: int = max(1, min(4, os.cpu_count() or 1))  # programs run in parallel (at most 64)
    uid_base: int = int(os.environ.get("DLM_TRL_SANDBOX_UID_BASE", 2_000_000_000))  # root only
    # Stdlib modules that may be imported before the runner drops its uid, if the program imports
    # them (needed when no mount namespace provides the stdlib bind mount; saves time otherwise).
    preload: tuple[str, ...] = _DEFAULT_PRELOAD
    # Layers that must be active, by the keys of isolation(): e.g. ("network", "uid", "landlock").
    require: tuple[str, ...] = ()


@dataclass
class SandboxResult:
    passed: bool
    status: str  # "passed" | "failed" | "timeout" | "sandbox_error" | "too_long"
    detail: str = ""
    output: str = ""
    seconds: float = 0.0
    units: list[bool] | None = None  # outcome of each scored unit, when run with a UnitPlan

    def fraction(self) -> float:
        """Share of the scored units that passed (without units: 1.0 if passed, else 0.0)."""
        if self.units is None:
            return 1.0 if self.passed else 0.0
        return sum(self.units) / len(self.units) if self.units else 0.0


# --------------------------------------------------------------------------------------------
# program assembly

_FENCE_RE = re.compile(r"```[ \t]*([\w+.-]*)[^\n]*\n(.*?)(?:\n[ \t]*```|\Z)", re.DOTALL)
_IMPORT_RE = re.compile(r"^(?:import\s+\w|from\s+[\w.]+\s+import\s)[^\n]*$", re.MULTILINE)


def _defines(code: str, entry_point: str) -> bool:
    return re.search(rf"^(?:async\s+)?def\s+{re.escape(entry_point)}\s*\(", code, re.MULTILINE) is not None


def extract_code(completion: str, entry_point: str) -> str | None:
    """The code that replaces ``prompt + completion``, or ``None`` when the completion is a body.

    A fenced block defining ``entry_point`` (else the first Python/unlabelled block), or the whole
    completion if it defines ``entry_point`` at the top level and does not start indented.
    """
    blocks = [
        body
        for lang, body in _FENCE_RE.findall(completion)
        if lang.lower() in ("", "python", "py", "python3")
    ]
    if blocks:
        for body in blocks:
            if _defines(body, entry_point):
                return body
        return blocks[0]
    first = next((line for line in completion.splitlines() if line.strip()), "")
    if first[:1] not in (" ", "\t") and _defines(completion, entry_point):
        return completion
    return None


def _prefix(prompt: str) -> str:
    """The prompt if it is valid Python, else only its import lines."""
    try:
        ast.parse(prompt)
        return prompt
    except (SyntaxError, ValueError):
        return "\n".join(_IMPORT_RE.findall(prompt))


def build_program(prompt: str, completion: str, entry_point: str) -> tuple[str, str]:
    """``(program, helpers)``: the untrusted program for the runner and the prompt code the
    checker executes before the test (imports and helper functions)."""
    helpers = _prefix(prompt)
    code = extract_code(completion, entry_point)
    if code is None:
        return prompt + completion, helpers
    return helpers + "\n" + code, helpers


def _prompt_text(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[-1], dict):
        return completion_to_text([prompt[-1]])
    return completion_to_text(prompt)


# --------------------------------------------------------------------------------------------
# counters

_METRIC_NAMES = ("programs", "passed", "failed", "timeouts", "sandbox_errors", "too_long")
_metrics = dict.fromkeys(_METRIC_NAMES, 0)
_metrics_lock = threading.Lock()


def metrics() -> dict[str, int]:
    """A snapshot of the sandbox counters (see the module docstring)."""
    with _metrics_lock:
        return dict(_metrics)


def reset_metrics() -> None:
    with _metrics_lock:
        for k in _metrics:
            _metrics[k] = 0


def _count(status: str) -> None:
    key = {"passed": "passed", "failed": "failed", "timeout": "timeouts", "too_long": "too_long"}.get(
        status, "sandbox_errors"
    )
    with _metrics_lock:
        _metrics["programs"] += 1
        _metrics[key] += 1


# --------------------------------------------------------------------------------------------
# isolation probe


@dataclass
class _Mode:
    prefix: list[str] = field(default_factory=list)  # unshare command, or []
    drop_uid: bool = False
    landlock: bool = True
    tmpfs: bool = False
    fresh_userns: bool = False
    pidns: bool = False
    report: dict = field(default_factory=dict)


_mode: _Mode | None = None
_mode_lock = threading.Lock()


def _candidate_modes() -> list[_Mode]:
    unshare = shutil.which("unshare")
    root = os.geteuid() == 0
    modes: list[_Mode] = []
    if unshare:
        pid = ["--pid", "--fork", "--kill-child"]
        if root:
            modes += [
                _Mode([unshare, "--net", *pid, "--mount-proc"], drop_uid=True, tmpfs=True, pidns=True),
                _Mode([unshare, "--net", *pid], drop_uid=True, pidns=True),
                _Mode([unshare, "--net"], drop_uid=True),
            ]
        else:
            user = ["--user", "--map-root-user"]
            modes += [
                _Mode(
                    [unshare, *user, "--net", *pid, "--mount-proc"], tmpfs=True, fresh_userns=True, pidns=True
                ),
                _Mode([unshare, *user, "--net", *pid], fresh_userns=True, pidns=True),
                _Mode([unshare, *user, "--net"], fresh_userns=True),
            ]
    modes.append(_Mode([], drop_uid=root))
    out = []
    for m in modes:  # each with Landlock first, then without
        out += [m, replace(m, landlock=False)]
    return out


_PROBE = ("def f(x):\n    return x + 1\n", "def check(candidate):\n    assert candidate(1) == 2\n", "f")


def _describe(mode: _Mode, verdict: dict, config: SandboxConfig) -> dict:
    iso = verdict.get("isolation") or {}
    ll = iso.get("landlock") or {}
    net_ok = bool(mode.prefix) and "--net" in mode.prefix and verdict.get("net_interfaces") in ([], ["lo"])
    return {
        "process": "new session, fresh cwd, scrubbed env, python -I -S -B, fds closed",
        "rlimits": ",".join(r.removeprefix("RLIMIT_").lower() for r in iso.get("rlimits", [])),
        "uid": (
            f"dropped to uid {iso['uid']} (one per worker)"
            if mode.drop_uid and iso.get("uid", 0) != 0
            else None
        ),
        "network": "network namespace" if net_ok else None,
        "pid": "pid namespace" if mode.pidns and verdict.get("pid") == 1 else None,
        "userns": "user namespace" if mode.fresh_userns else None,
        "landlock": (
            f"Landlock ABI {ll['abi']} (fs{', tcp' if ll.get('tcp') else ''}"
            f"{', signal/socket scope' if ll.get('scoped_signals') else ''})"
            if ll.get("abi")
            else None
        ),
        "tmpfs": (
            f"mount namespace: tmpfs scratch ({config.scratch_mb} MB), read-only stdlib bind mount, "
            f"host {', '.join(verdict['tmpfs'])} hidden"
            if verdict.get("tmpfs")
            else None
        ),
    }


def isolation(config: SandboxConfig | None = None) -> dict:
    """Probe (once per process) and return which isolation layers are active.

    Keys: ``process``, ``rlimits``, ``uid``, ``network``, ``pid``, ``userns``, ``landlock``,
    ``tmpfs``; a value of ``None`` means that layer is not available on this machine.
    """
    config = config or SandboxConfig()
    global _mode
    with _mode_lock:
        if _mode is None:
            errors = []
            for mode in _candidate_modes():
                program, test, entry_point = _PROBE
                res, verdict = _run_one(program, test, "", entry_point, config, 0, mode, report=True)
                if res.passed:
                    mode.report = _describe(mode, verdict, config)
                    _mode = mode
                    break
                errors.append(f"{' '.join(mode.prefix) or 'no unshare'}: {res.detail[:200]}")
            else:
                raise RuntimeError(
                    "the code sandbox cannot run even a trivial program:\n" + "\n".join(errors)
                )
            active = [v for v in _mode.report.values() if v]
            missing = [k for k, v in _mode.report.items() if not v and k != "userns"]
            logger.log(
                logging.INFO if not missing else logging.WARNING,
                "code sandbox isolation: %s; not available: %s",
                "; ".join(active),
                ", ".join(missing) or "none",
            )
        report = dict(_mode.report)
    missing = [r for r in config.require if not report.get(r)]
    if missing:
        raise RuntimeError(f"code sandbox: required isolation {missing} is not available here ({report})")
    return report


# --------------------------------------------------------------------------------------------
# running one program


def sandbox_uid(config: SandboxConfig, slot: int) -> int:
    """The unprivileged uid (and gid) of worker ``slot`` when the trainer runs as root.

    ``uid_base + 64 * block + slot``, where ``block`` is ``LOCAL_RANK`` (so the ranks of one
    ``accelerate``/``torchrun`` job never share a uid) or else this process id modulo 4096. None
    of these uids needs an entry in ``/etc/passwd``.
    """
    local_rank = os.environ.get("LOCAL_RANK", "")
    block = int(local_rank) if local_rank.isdigit() else os.getpid() % 4096
    return config.uid_base + 64 * (block % 4096) + slot


class _Slots:
    """Worker slots; slot k runs as :func:`sandbox_uid` (k) so parallel programs never share a uid."""

    def __init__(self) -> None:
        self._free: queue.Queue[int] = queue.Queue()
        self._made = 0
        self._lock = threading.Lock()

    def acquire(self, limit: int) -> int:
        with self._lock:
            if self._free.empty() and self._made < max(limit, 1):
                self._made += 1
                return self._made - 1
        return self._free.get()

    def release(self, slot: int) -> None:
        self._free.put(slot)


_slots = _Slots()


def _communicate(proc: subprocess.Popen, data: bytes, timeout: float, cap: int) -> tuple[bytes, bytes, bool]:
    """Feed stdin, read stdout/stderr (keeping at most ``cap`` bytes each) until EOF or timeout."""
    assert proc.stdin and proc.stdout and proc.stderr
    bufs = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
    view = memoryview(data)
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        stdin_fd = proc.stdin.fileno()
        os.set_blocking(stdin_fd, False)
        sel.register(stdin_fd, selectors.EVENT_WRITE)
        for fd in bufs:
            sel.register(fd, selectors.EVENT_READ)
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                return bytes(bufs[proc.stdout.fileno()]), bytes(bufs[proc.stderr.fileno()]), True
            for key, _ in sel.select(left):
                fd = key.fd
                if fd == stdin_fd:
                    try:
                        view = view[os.write(fd, view[:65536]) :]
                    except BlockingIOError:
                        continue
                    except BrokenPipeError:  # the checker died early; its verdict (none) tells
                        view = view[:0]
                    if not view:
                        sel.unregister(fd)
                        proc.stdin.close()
                    continue
                chunk = os.read(fd, 65536)
                if not chunk:
                    sel.unregister(fd)
                elif len(bufs[fd]) < cap:
                    bufs[fd] += chunk[: cap - len(bufs[fd])]
    return bytes(bufs[proc.stdout.fileno()]), bytes(bufs[proc.stderr.fileno()]), False


def _frame(obj: dict) -> bytes:
    body = json.dumps(obj).encode()
    return struct.pack(">I", len(body)) + body


def _kill_uid(uid: int) -> None:
    """Kill every process of ``uid`` (root only; used only without a PID namespace): run
    ``kill -9 -1`` as that uid, which signals every process the uid may signal, i.e. its own."""
    kill = shutil.which("kill", path="/usr/bin:/bin")
    if kill is None:
        logger.warning("no kill binary: cannot sweep processes of sandbox uid %d", uid)
        return
    try:
        subprocess.run(
            [kill, "-9", "-1"],
            user=uid,
            group=uid,
            extra_groups=[],
            timeout=10,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={},
            cwd="/",
        )
    except (OSError, subprocess.SubprocessError) as err:
        logger.warning("could not sweep processes of sandbox uid %d: %s", uid, err)


def _rmtree(path: str) -> None:
    def _retry(func, p, _exc):
        try:
            os.chmod(os.path.dirname(p), 0o700)
            os.chmod(p, 0o700)
            func(p)
        except OSError:
            pass

    for _ in range(3):
        shutil.rmtree(path, onerror=_retry)
        if not os.path.exists(path):
            return
        time.sleep(0.05)
    logger.warning("could not remove sandbox directory %s", path)


def _run_one(
    program: str,
    test: str,
    helpers: str,
    entry_point: str,
    config: SandboxConfig,
    slot: int,
    mode: _Mode,
    report: bool = False,
    plan: UnitPlan | None = None,
) -> tuple[SandboxResult, dict]:
    start = time.monotonic()
    uid = sandbox_uid(config, slot) if mode.drop_uid else None
    scratch = tempfile.mkdtemp(prefix=f"dlm_trl_sbx{slot}_")
    if uid is not None:
        os.chown(scratch, uid, uid)
    os.chmod(scratch, 0o700)
    env = {
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "HOME": scratch,
        "TMPDIR": scratch,
    }
    py_dirs = sorted({os.path.realpath(p) for p in (sys.base_prefix, sys.base_exec_prefix)})
    nonce = secrets.token_hex(16)
    first = {  # everything the runner may know
        "scratch": scratch,
        "program": program,
        "entry_point": entry_point,
        "max_output_bytes": config.max_output_bytes,
        "tmpfs_mb": config.scratch_mb if mode.tmpfs else 0,
        "preload": list(config.preload),
        "runner": {
            "uid": uid,
            "gid": uid,
            "cpu_s": int(config.cpu_s),
            "memory_mb": int(config.memory_mb),
            "file_mb": int(config.file_mb),
            "open_files": int(config.open_files),
            "max_procs": int(config.max_procs),
            "fresh_userns": mode.fresh_userns,
            "landlock": (
                {
                    "rw_dirs": [scratch],
                    "ro_paths": py_dirs + ["/usr/lib", "/usr/lib64", "/lib", "/lib64", "/usr/share/zoneinfo"],
                    "rw_files": ["/dev/null"],
                    "ro_files": ["/dev/urandom", "/dev/zero"],
                }
                if mode.landlock
                else None
            ),
        },
    }
    second = {"nonce": nonce, "helpers": helpers, "test": test, "units": None}  # only the checker reads this
    if plan is not None:
        second.update(test=plan.setup, units=[list(u) for u in plan.units], aliases=list(plan.aliases))
    first["report"] = report
    stdin_data = _frame(first) + _frame(second)
    cmd = [*mode.prefix, sys.executable, "-I", "-S", "-B", _PROC_SCRIPT, "checker"]
    verdict: dict = {}
    try:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=scratch,
            env=env,
            start_new_session=True,
            close_fds=True,
        )
    except OSError as err:
        _rmtree(scratch)
        return SandboxResult(False, "sandbox_error", f"could not start the sandbox: {err}"), verdict
    try:
        out, err, timed_out = _communicate(
            proc, stdin_data, config.timeout_s, 64 * 1024 + 4 * config.max_output_bytes
        )
        if not timed_out:
            try:
                proc.wait(timeout=max(0.5, config.timeout_s - (time.monotonic() - start)))
            except subprocess.TimeoutExpired:
                timed_out = True
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the checker and, with it, the namespace
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            try:
                stream.close()
            except (OSError, AttributeError):
                pass
        if uid is not None and not mode.pidns:
            _kill_uid(uid)
        _rmtree(scratch)
    seconds = time.monotonic() - start
    if timed_out:
        return SandboxResult(
            False, "timeout", f"no verdict within {config.timeout_s} s", seconds=seconds
        ), verdict
    lines = out.decode("utf-8", "replace").strip().splitlines()
    try:
        verdict = json.loads(lines[-1]) if lines else {}
    except ValueError:
        verdict = {}
    if not isinstance(verdict, dict) or verdict.get("nonce") != nonce:
        detail = f"no valid verdict (exit code {proc.returncode}): {err.decode('utf-8', 'replace')[-500:]}"
        return SandboxResult(False, "sandbox_error", detail, seconds=seconds), {}
    passed = verdict.get("passed") is True and proc.returncode == 0
    units = None
    if plan is not None:  # the checker's per-unit outcomes; anything malformed counts as all failed
        n = plan.num_scored
        got = verdict.get("units")
        ok = type(got) is list and len(got) <= n and all(type(u) is bool for u in got)
        units = (got if ok else []) + [False] * (n - (len(got) if ok else 0))
        passed = passed and ok and n > 0 and all(units)
    return (
        SandboxResult(
            passed,
            "passed" if passed else "failed",
            str(verdict.get("detail", ""))[:1000],
            str(verdict.get("output", ""))[: config.max_output_bytes],
            seconds,
            units,
        ),
        verdict,
    )


def run_check(
    program: str, test: str, entry_point: str, helpers: str = "", config: SandboxConfig | None = None,
    plan: UnitPlan | None = None,
) -> SandboxResult:
    """Run ``program`` (untrusted) against ``test``'s ``check(<entry_point>)`` in the sandbox, or, with
    ``plan``, against its units one by one (``test`` is then ignored: the plan holds the setup)."""
    config = config or SandboxConfig()
    if not 1 <= config.max_workers <= 64:
        raise ValueError(f"max_workers must be in 1..64, got {config.max_workers}")
    if len(program) > config.max_program_chars:
        _count("too_long")
        units = [False] * plan.num_scored if plan is not None else None
        return SandboxResult(False, "too_long", f"program longer than {config.max_program_chars} characters",
                             units=units)
    isolation(config)
    assert _mode is not None
    slot = _slots.acquire(config.max_workers)
    try:
        result, _ = _run_one(program, test, helpers, entry_point, config, slot, _mode, plan=plan)
    except OSError as err:  # e.g. no space for the scratch directory: score 0, but say so
        logger.warning("code sandbox failed to run a program: %s", err)
        result = SandboxResult(False, "sandbox_error", f"{type(err).__name__}: {err}")
    finally:
        _slots.release(slot)
    if result.units is None and plan is not None:  # no verdict (timeout, sandbox error): every unit failed
        result.units = [False] * plan.num_scored
    _count(result.status)
    return result


def run_checks(jobs: list[tuple], config: SandboxConfig | None = None) -> list[SandboxResult]:
    """Run ``(program, test, entry_point, helpers[, plan])`` jobs, ``config.max_workers`` at a time."""
    config = config or SandboxConfig()
    if not jobs:
        return []
    isolation(config)  # probe once, before the threads start
    with ThreadPoolExecutor(max_workers=max(1, min(config.max_workers, len(jobs)))) as pool:
        return list(pool.map(
            lambda j: run_check(j[0], j[1], j[2], j[3], config, plan=j[4] if len(j) > 4 else None), jobs))


# --------------------------------------------------------------------------------------------
# the reward


def _row_job(prefix: Any, completion: Any, columns: dict, i: int, partial: bool, name: str) -> tuple:
    """The sandbox job of row ``i``: MBPP when its ``test_list`` is non-empty, else HumanEval."""
    entry = columns["entry_point"][i] if "entry_point" in columns else None
    test_list = columns["test_list"][i] if "test_list" in columns else None
    text = completion_to_text(completion)
    if test_list is not None and len(test_list):
        setup = columns["test_setup_code"][i] if "test_setup_code" in columns else ""
        plan = mbpp_plan(test_list, setup)
        entry = str(entry) if entry else mbpp_entry_point(test_list, setup)
        own = _prompt_text(columns["code_prefix"][i]) if "code_prefix" in columns else ""
        program, helpers = build_program(own, text, entry)
        if plan.setup.strip():
            program = plan.setup + "\n" + program
        return program, "", entry, helpers, plan
    if "test" not in columns or entry is None:
        raise ValueError(
            f"reward {name!r}: row {i} has neither a non-empty 'test_list' (MBPP) nor "
            "'test' and 'entry_point' columns (HumanEval)"
        )
    test, entry = str(columns["test"][i]), str(entry)
    program, helpers = build_program(_prompt_text(prefix), text, entry)
    return program, test, entry, helpers, humaneval_plan(test) if partial else None


def make_code_unit_tests(
    config: SandboxConfig | None = None, name: str | None = None, partial_credit: bool = False
):
    """A ``code_unit_tests`` reward with its own :class:`SandboxConfig` (``__name__`` = ``name``).

    ``partial_credit``: score the fraction of a row's asserts that passed instead of 1.0 / 0.0.
    """
    config = config or SandboxConfig()
    name = name or ("code_unit_tests_partial" if partial_credit else "code_unit_tests")

    def reward(prompts: list[Any], completions: list[Any], **columns: Any) -> list[float]:
        n = len(completions)
        required = () if "test_list" in columns else ("test", "entry_point")  # KeyError naming what is missing
        for key in ("test", "entry_point", "test_list", "test_setup_code", "code_prefix", "prompt"):
            if key in columns or key in required:
                column(columns, key, n, name)  # present, and one value per completion
        if "code_prefix" in columns:
            prefixes = list(columns["code_prefix"])
        elif "prompt" in columns:
            prefixes = list(columns["prompt"])
        elif prompts is not None and len(prompts) == n:
            prefixes = list(prompts)
        elif "test_list" in columns:  # MBPP rows need no prefix
            prefixes = [""] * n
        else:
            raise ValueError(f"reward {name!r}: no code prefix (columns 'code_prefix'/'prompt' or prompts)")
        jobs = [_row_job(prefixes[i], completions[i], columns, i, partial_credit, name) for i in range(n)]
        results = run_checks(jobs, config)
        log_metric = columns.get("log_metric")
        if callable(log_metric):
            try:
                log_metric(f"{name}/timeouts", float(sum(r.status == "timeout" for r in results)))
                log_metric(f"{name}/sandbox_errors", float(sum(r.status == "sandbox_error" for r in results)))
            except Exception:
                logger.debug("log_metric failed", exc_info=True)
        if partial_credit:
            return [r.fraction() for r in results]
        return [1.0 if r.passed else 0.0 for r in results]

    reward.__name__ = reward.__qualname__ = name
    reward.config = config  # type: ignore[attr-defined]
    reward.partial_credit = partial_credit  # type: ignore[attr-defined]
    return reward


code_unit_tests = make_code_unit_tests()
code_unit_tests.__doc__ = (
    "Unit-test rewards: 1.0 when all of a row's tests pass, else 0.0, every program run in a sandbox.\n\n" + __doc__
)
code_unit_tests.__module__ = __name__
code_unit_tests_partial = make_code_unit_tests(partial_credit=True)
code_unit_tests_partial.__doc__ = (
    "Partial-credit unit-test rewards: the fraction of a row's tests that pass, every program run in a sandbox.\n\n"
    + __doc__
)
code_unit_tests_partial.__module__ = __name__
