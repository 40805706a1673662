"""The processes of the code sandbox (see ``code.py`` for the design and the threat model).

Executed as a script, never imported by the trainer; standard library only (it runs under
``python -I -S -B``)::

    [unshare ...] python -I -S -B _sandbox_proc.py checker

The trainer writes two length-prefixed JSON frames to the checker's stdin:

1. ``{"scratch", "tmpfs_mb", "max_output_bytes", "preload", "runner": {...limits...}, "program", "entry_point"}``
2. ``{"nonce", "helpers", "test", "units", "aliases"}`` (``units``: null, or ``[[code, scored], ...]``)

*checker* (trusted) reads frame 1 with exact-length reads, so that nothing of frame 2 is in its
memory yet, imports the standard-library modules the program imports, and forks the *runner*.
Only then does it read frame 2, execute the dataset's prompt helpers and ``test``, and call
``check(candidate)`` (or, when ``units`` is given, execute each unit, e.g. each MBPP assert, and
report which scored units ran to their end: ``_run_units``), where ``candidate`` forwards each
call to the runner over two pipes (arguments and results are plain data). It writes one JSON
verdict line, echoing the nonce, to a private duplicate of its stdout; the test's own prints go
to ``/dev/null``.

*runner* (the forked child; untrusted code) lowers its resource limits, applies Landlock, drops
to the unprivileged uid, closes every descriptor except its two pipes (stdin becomes /dev/null,
stdout/stderr a pipe the checker drains and caps), then executes the program and serves calls.
It never returns into checker code: it always ends with ``os._exit``.
"""

from __future__ import annotations

import json
import os
import select
import struct
import sys

MAX_FRAME = 16 << 20  # bytes of one message
_HDR = struct.Struct(">I")


# ----------------------------------------------------------------------------------------------
# framing and the value codec (plain data only; the decoder never builds anything else)


def _read_exact(fd: int, n: int) -> bytes | None:
    chunks, left = [], n
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_frame(fd: int):
    head = _read_exact(fd, 4)
    if head is None:
        return None
    (n,) = _HDR.unpack(head)
    if n > MAX_FRAME:
        raise ValueError(f"message of {n} bytes exceeds the {MAX_FRAME}-byte limit")
    body = _read_exact(fd, n)
    return None if body is None else json.loads(body)


def write_frame(fd: int, obj) -> None:
    body = json.dumps(obj).encode()
    if len(body) > MAX_FRAME:
        raise ValueError(f"message of {len(body)} bytes exceeds the {MAX_FRAME}-byte limit")
    view = memoryview(_HDR.pack(len(body)) + body)
    while view:
        view = view[os.write(fd, view) :]


def encode(value, depth: int = 0):
    """Plain Python data -> JSON-able structure. Tuples, sets, dicts, bytes, complex are tagged."""
    if depth > 200:
        raise ValueError("value nested too deeply")
    if value is None or isinstance(value, bool):
        return None if value is None else bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, list):
        return [encode(v, depth + 1) for v in value]
    if isinstance(value, tuple):
        return {"$": "tuple", "v": [encode(v, depth + 1) for v in value]}
    if isinstance(value, dict):
        return {"$": "dict", "v": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in value.items()]}
    if isinstance(value, (set, frozenset)):
        tag = "frozenset" if isinstance(value, frozenset) else "set"
        return {"$": tag, "v": [encode(v, depth + 1) for v in value]}
    if isinstance(value, (bytes, bytearray)):
        return {"$": "bytes", "v": bytes(value).hex()}
    if isinstance(value, complex):
        return {"$": "complex", "v": [value.real, value.imag]}
    raise TypeError(f"values of type {type(value).__name__} cannot cross the sandbox boundary")


def decode(obj, depth: int = 0):
    """Inverse of :func:`encode`; accepts nothing but the tagged plain-data forms."""
    if depth > 200:
        raise ValueError("value nested too deeply")
    if obj is None or type(obj) in (bool, int, float, str):
        return obj
    if type(obj) is list:
        return [decode(v, depth + 1) for v in obj]
    if type(obj) is dict and set(obj) == {"$", "v"}:
        tag, v = obj["$"], obj["v"]
        if tag == "tuple" and type(v) is list:
            return tuple(decode(x, depth + 1) for x in v)
        if tag == "dict" and type(v) is list and all(type(kv) is list and len(kv) == 2 for kv in v):
            return {decode(k, depth + 1): decode(x, depth + 1) for k, x in v}
        if tag in ("set", "frozenset") and type(v) is list:
            items = [decode(x, depth + 1) for x in v]
            return set(items) if tag == "set" else frozenset(items)
        if tag == "bytes" and type(v) is str:
            return bytes.fromhex(v)
        if tag == "complex" and type(v) is list and len(v) == 2 and all(type(x) in (int, float) for x in v):
            return complex(v[0], v[1])
    raise ValueError("malformed value")


# ----------------------------------------------------------------------------------------------
# runner (untrusted side)

_LL_CREATE, _LL_ADD_RULE, _LL_RESTRICT = 444, 445, 446  # same numbers on every architecture


def _landlock(rw_dirs: list[str], ro_paths: list[str], rw_files: list[str], ro_files: list[str]) -> dict:
    """Restrict this process (and its children) with Landlock; returns what was applied."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    abi = libc.syscall(_LL_CREATE, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    if abi < 1:
        return {"abi": 0}
    fs = (1 << 13) - 1  # ABI 1: execute .. make_sym
    if abi >= 2:
        fs |= 1 << 13  # refer
    if abi >= 3:
        fs |= 1 << 14  # truncate
    if abi >= 5:
        fs |= 1 << 15  # ioctl_dev
    net = 0b11 if abi >= 4 else 0  # bind_tcp, connect_tcp: no rule, so both denied
    scoped = 0b11 if abi >= 6 else 0  # abstract unix sockets, signals: only inside this domain

    class RulesetAttr(ctypes.Structure):
        _fields_ = [("fs", ctypes.c_uint64), ("net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]

    class PathBeneath(ctypes.Structure):
        _pack_ = 1
        _fields_ = [("allowed", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]

    attr = RulesetAttr(fs, net, scoped)
    size = 8 if abi < 4 else (16 if abi < 6 else 24)
    ruleset = libc.syscall(_LL_CREATE, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset failed")
    read_dir = 1 | 4 | 8  # execute, read_file, read_dir
    file_rw = 2 | 4 | (1 << 14 if abi >= 3 else 0)  # write_file, read_file, truncate
    rules = [(p, fs) for p in rw_dirs] + [(p, read_dir) for p in ro_paths]
    rules += [(p, file_rw) for p in rw_files] + [(p, 4) for p in ro_files]
    for path, allowed in rules:
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            rule = PathBeneath(allowed, fd)
            if libc.syscall(_LL_ADD_RULE, ruleset, 1, ctypes.byref(rule), ctypes.c_uint32(0)) < 0:
                raise OSError(ctypes.get_errno(), f"landlock_add_rule failed for {path}")
        finally:
            os.close(fd)
    if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
    if libc.syscall(_LL_RESTRICT, ruleset, ctypes.c_uint32(0)) < 0:
        raise OSError(ctypes.get_errno(), "landlock_restrict_self failed")
    os.close(ruleset)
    return {"abi": int(abi), "fs": True, "tcp": bool(net), "scoped_signals": bool(scoped)}


def _count_user_tasks(uid: int) -> int:
    n = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as fh:
                status = fh.read()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if fields.get("Uid", "").split()[:1] == [str(uid)]:
            n += int(fields.get("Threads", "1").strip() or 1)
    return n


def _sandbox_self(cfg: dict) -> dict:
    """Everything that must happen before untrusted code runs. Raises if a step fails."""
    import resource

    report: dict = {}
    mb = 1 << 20
    uid, gid = cfg.get("uid"), cfg.get("gid")
    nproc = cfg["max_procs"]
    if uid is None and not cfg.get("fresh_userns"):
        nproc += _count_user_tasks(os.getuid())  # same uid as the trainer: all its tasks count
    limits = {
        "RLIMIT_CPU": (cfg["cpu_s"], cfg["cpu_s"] + 1),
        "RLIMIT_AS": (cfg["memory_mb"] * mb,) * 2,
        "RLIMIT_FSIZE": (cfg["file_mb"] * mb,) * 2,
        "RLIMIT_NOFILE": (cfg["open_files"],) * 2,
        "RLIMIT_CORE": (0, 0),
        "RLIMIT_NPROC": (nproc, nproc),
    }
    for name, value in limits.items():
        resource.setrlimit(getattr(resource, name), value)
    report["rlimits"] = sorted(limits)
    if cfg.get("landlock"):
        ll = cfg["landlock"]
        report["landlock"] = _landlock(ll["rw_dirs"], ll["ro_paths"], ll["rw_files"], ll["ro_files"])
    if uid is not None:
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
        if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid) or os.getgroups():
            raise RuntimeError("failed to drop privileges")
    report["uid"] = os.getuid()
    return report


def _runner(job: dict, fd_in: int, fd_out: int, out_w: int) -> None:
    """Body of the forked child. Never returns."""
    code = 0
    try:
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)  # frame 2 (the test, the nonce) is still unread in the stdin pipe
        os.dup2(out_w, 1)
        os.dup2(out_w, 2)
        try:
            os.chdir(job["scratch"])
            if job.get("stdlib_mount"):
                _use_stdlib_mount(job["stdlib_mount"])
            report = _sandbox_self(job["runner"])
        except BaseException as err:  # never run untrusted code in a half-made sandbox
            write_frame(fd_out, {"error": f"sandbox setup failed: {type(err).__name__}: {err}"})
            code = 3
            return
        keep = sorted({0, 1, 2, fd_in, fd_out})
        for low, high in zip(keep, [*keep[1:], 1 << 16], strict=True):
            os.closerange(low + 1, high)  # the verdict descriptor and everything else of the checker
        sys.argv = ["program"]
        program, entry_point = job["program"], job["entry_point"]
        job.clear()
        namespace = {"__name__": "__sandbox__"}
        try:
            exec(compile(program, "<program>", "exec"), namespace)  # noqa: S102  (the point of it all)
            fn = namespace.get(entry_point)
            if not callable(fn):
                raise NameError(f"the program does not define a function {entry_point!r}")
        except BaseException as err:
            write_frame(fd_out, {"error": f"program failed: {type(err).__name__}: {str(err)[:500]}"})
            return
        write_frame(fd_out, {"ready": True, "isolation": report})
        while True:
            req = read_frame(fd_in)
            if req is None:
                return
            try:
                reply = {"value": encode(fn(*decode(req["args"]), **decode(req["kwargs"])))}
            except BaseException as err:
                reply = {"exc": type(err).__name__, "msg": str(err)[:500]}
            write_frame(fd_out, reply)
    except BaseException:
        code = 4
    finally:
        os._exit(code)


def _preload(program: str, allowed: list[str]) -> None:
    """Import the allowed stdlib modules that ``program`` imports (the interpreter's directory may
    be unreadable after the uid drop). Only names on the trainer's allow-list are imported."""
    wanted = set()
    for line in program.splitlines():
        words = line.replace(",", " ").split()
        if len(words) >= 2 and words[0] in ("import", "from"):
            names = [words[1]] if words[0] == "from" else [w for w in words[1:] if w != "as"]
            for name in names:
                parts = name.split(".")
                for i in range(1, len(parts) + 1):
                    wanted.add(".".join(parts[:i]))
    for name in sorted(wanted):
        if name in allowed:
            try:
                __import__(name)
            except Exception:
                pass


# ----------------------------------------------------------------------------------------------
# checker (trusted side)


class SandboxLost(BaseException):
    """The runner died or broke the protocol. A BaseException, so a test's ``except Exception``
    cannot swallow it and go on to "pass"."""


_NOT_MAPPED = {"StopIteration", "StopAsyncIteration"}


def _exception_class(name: str) -> type[BaseException]:
    import builtins

    cls = getattr(builtins, name, None)
    if isinstance(cls, type) and issubclass(cls, Exception) and name not in _NOT_MAPPED:
        return cls
    return RuntimeError


_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_REMOUNT, _MS_BIND, _MS_REC = 1, 2, 4, 32, 4096, 16384


def _mount(source, target: str, fstype, flags: int, data) -> bool:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    enc = lambda x: x.encode() if isinstance(x, str) else x  # noqa: E731
    return libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)) == 0


def _mount_scratch(scratch: str, size_mb: int, uid: int) -> dict | None:
    """Inside our own mount namespace (changes are invisible outside it):

    * the scratch directory's parent (the system temp directory, e.g. ``/tmp``) is covered by a
      fresh size-limited tmpfs holding only a new, empty scratch directory at the same path, so the
      host's temp files and Unix sockets are out of reach; ``/run``, ``/dev/shm`` and ``/var/tmp``
      are covered by empty read-only tmpfs mounts;
    * the standard library is bind-mounted read-only at ``scratch/.stdlib``, so that the runner can
      import any stdlib module lazily after the uid drop (the interpreter may live below a 0700
      directory such as /root).

    Returns ``{"stdlib": mount point, "hidden": [...]}``, or None if the tmpfs could not be mounted.
    """
    stdlib = os.path.dirname(os.path.realpath(os.__file__))
    parent = os.path.dirname(os.path.realpath(scratch))
    opts = f"size={size_mb}m,mode=0700,uid={uid},gid={uid}"
    hidden = []
    inside = (stdlib + os.sep).startswith(parent + os.sep) or os.path.realpath(sys.executable).startswith(
        parent + os.sep
    )
    if parent not in ("/tmp", "/var/tmp", "/dev/shm") or inside:  # only cover a plain temp directory
        if not _mount("tmpfs", scratch, "tmpfs", _MS_NOSUID | _MS_NODEV, opts):
            return None
    else:
        if not _mount("tmpfs", parent, "tmpfs", _MS_NOSUID | _MS_NODEV, f"size={size_mb}m,mode=0755"):
            return None
        hidden.append(parent)
        os.mkdir(scratch, 0o700)
        os.chown(scratch, uid, uid)
    for path in ("/run", "/dev/shm", "/var/tmp"):
        if os.path.isdir(path) and not os.path.islink(path) and path != parent:
            if _mount("tmpfs", path, "tmpfs", _MS_RDONLY | _MS_NOSUID | _MS_NODEV, "size=4k,mode=0755"):
                hidden.append(path)
    target = os.path.join(scratch, ".stdlib")
    os.mkdir(target, 0o755)
    if not _mount(stdlib, target, None, _MS_BIND | _MS_REC, None):
        return None
    if not _mount(None, target, None, _MS_BIND | _MS_REMOUNT | _MS_RDONLY | _MS_NOSUID | _MS_NODEV, None):
        return None
    return {"stdlib": target, "hidden": hidden}


def _use_stdlib_mount(target: str) -> None:
    """Point the import system (sys.path and package __path__s) at the bind-mounted stdlib."""
    import importlib

    stdlib = os.path.dirname(os.path.realpath(os.__file__))

    def remap(path: str) -> str:
        real = os.path.realpath(path) if os.path.exists(path) else path
        return target + real[len(stdlib) :] if real == stdlib or real.startswith(stdlib + os.sep) else path

    sys.path[:] = [remap(p) for p in sys.path]
    for module in list(sys.modules.values()):
        paths = getattr(module, "__path__", None)
        if isinstance(paths, list):
            paths[:] = [remap(p) for p in paths]
    sys.path_importer_cache.clear()
    importlib.invalidate_caches()


def _net_interfaces() -> list[str]:
    import socket

    try:
        return sorted(name for _, name in socket.if_nameindex())
    except OSError:
        return []


class _Channel:
    """The checker's end of the pipes to the runner; drains (and caps) the runner's output while waiting."""

    def __init__(self, req_w: int, resp_r: int, out_r: int, cap: int) -> None:
        self.req_w, self.resp_r, self.out_r, self.cap = req_w, resp_r, out_r, cap
        self.output = bytearray()
        self._buf = b""

    def _drain_once(self) -> bool:
        chunk = os.read(self.out_r, 65536)
        if not chunk:
            return False
        if len(self.output) < self.cap:
            self.output += chunk[: self.cap - len(self.output)]
        return True

    def _fill(self, n: int) -> bool:
        watch = [self.resp_r, self.out_r]
        while len(self._buf) < n:
            ready, _, _ = select.select(watch, [], [])
            if self.out_r in ready and not self._drain_once():
                watch.remove(self.out_r)
            if self.resp_r in ready:
                chunk = os.read(self.resp_r, 1 << 20)
                if not chunk:
                    return False
                self._buf += chunk
        return True

    def recv(self):
        if not self._fill(4):
            return None
        (n,) = _HDR.unpack(self._buf[:4])
        if n > MAX_FRAME:
            raise ValueError("reply too large")
        if not self._fill(4 + n):
            return None
        body, self._buf = self._buf[4 : 4 + n], self._buf[4 + n :]
        return json.loads(body)

    def finish_output(self, seconds: float) -> str:
        os.set_blocking(self.out_r, False)
        while select.select([self.out_r], [], [], seconds)[0]:
            try:
                if not self._drain_once():
                    break
            except BlockingIOError:
                break
        return self.output.decode("utf-8", "replace")


def _run_units(units: list, aliases: list, namespace: dict, candidate, verdict: dict) -> None:
    """Execute the trusted test's units (``[code, scored]``) one by one in ``namespace``, where the
    entry point (and each name of ``aliases``) is ``candidate``. A unit passes when its code runs to
    its end here, in the checker: every value it compares came back through the plain-data decoder,
    so the untrusted program decides what ``candidate`` returns but never how a unit is judged.

    ``verdict["units"]`` gets one bool per scored unit, appended as each finishes, so the units
    judged before a :class:`SandboxLost` (which ends the run: a BaseException) are kept and the
    rest count as failed. An unscored unit (setup such as ``import`` or an assignment) that raises
    ends the run too, since later units may need it. ``passed``: every scored unit passed.
    """
    for name in aliases:
        namespace[name] = candidate
    results: list = []
    verdict["units"] = results
    for i, (code, scored) in enumerate(units):
        try:
            exec(compile(code, f"<unit {i}>", "exec"), namespace)  # trusted dataset code
        except Exception:
            if not scored:
                return
            results.append(False)
            continue
        if scored:
            results.append(True)
    if results and len(results) == sum(1 for _, scored in units if scored) and all(results):
        verdict.update(passed=True, stage="done")


def checker_main() -> None:
    import ctypes

    # Not dumpable: a runner with our uid (no uid drop, e.g. non-root) cannot ptrace us or open
    # /proc/<checker>/{mem,fd/*}; Landlock, when active, forbids that anyway.
    ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE
    verdict_fd = os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 1)  # whatever the test prints is discarded; only the verdict goes to the parent
    job = read_frame(0)
    verdict: dict = {"nonce": None, "passed": False, "stage": "setup", "detail": "", "output": ""}
    pid = None
    channel = None
    try:
        scratch, runner = job["scratch"], job["runner"]
        stdlib_mount = None
        if job.get("tmpfs_mb") and os.geteuid() == 0:
            owner = runner["uid"] if runner.get("uid") is not None else os.getuid()
            mounted = _mount_scratch(scratch, job["tmpfs_mb"], owner)
            if mounted is not None:
                stdlib_mount = mounted["stdlib"]
                verdict["tmpfs"] = mounted["hidden"]
        job["stdlib_mount"] = stdlib_mount
        if job.get("report"):  # the isolation probe: say what this process can see
            verdict["net_interfaces"] = _net_interfaces()
            verdict["pid"] = os.getpid()
        # Import (once, here) the allowed stdlib modules the program imports: the runner inherits
        # them, the prompt helpers usually import the same, and without the stdlib bind mount the
        # runner could not read them after the uid drop.
        _preload(job["program"], job.get("preload", []))
        entry_point, cap = job["entry_point"], int(job["max_output_bytes"])
        req_r, req_w = os.pipe()
        resp_r, resp_w = os.pipe()
        out_r, out_w = os.pipe()
        pid = os.fork()  # this process is single-threaded
        if pid == 0:
            for fd in (req_w, resp_r, out_r):
                os.close(fd)
            _runner(job, req_r, resp_w, out_w)  # never returns
        for fd in (req_r, resp_w, out_w):
            os.close(fd)
        job = None
        channel = _Channel(req_w, resp_r, out_r, cap)
        second = read_frame(0)  # only now: the runner never had the test or the nonce in memory
        verdict["nonce"] = second["nonce"]

        ready = channel.recv()
        if ready is None:
            verdict.update(stage="program", detail="the program exited before defining the function")
            return
        if not ready.get("ready"):
            verdict.update(stage="program", detail=str(ready.get("error", "runner failed"))[:1000])
            return
        verdict["isolation"] = ready.get("isolation")

        def candidate(*args, **kwargs):
            try:
                write_frame(req_w, {"args": encode(list(args)), "kwargs": encode(kwargs)})
                reply = channel.recv()
            except OSError as err:
                raise SandboxLost(f"runner gone: {err}") from None
            except (ValueError, RecursionError) as err:
                raise SandboxLost(f"bad reply: {err}") from None
            if reply is None:
                raise SandboxLost("the program exited during a call")
            if type(reply) is dict and "value" in reply:
                try:
                    return decode(reply["value"])
                except (ValueError, TypeError, RecursionError) as err:
                    raise SandboxLost(f"bad value: {err}") from None
            if type(reply) is dict and "exc" in reply:
                raise _exception_class(str(reply["exc"]))(str(reply.get("msg", ""))[:500])
            raise SandboxLost("malformed reply")

        verdict["stage"] = "test"
        namespace: dict = {"__name__": "__check__"}
        try:
            exec(compile(second["helpers"], "<prompt>", "exec"), namespace)  # trusted dataset code
        except Exception:
            namespace = {"__name__": "__check__"}
        namespace[entry_point] = candidate
        exec(compile(second["test"], "<test>", "exec"), namespace)  # trusted dataset code
        if second.get("units") is not None:  # MBPP asserts / a split check(): scored one by one
            _run_units(second["units"], second.get("aliases") or [], namespace, candidate, verdict)
            return
        check = namespace.get("check")
        if not callable(check):
            verdict["detail"] = "the test does not define check()"
            return
        check(candidate)
        verdict.update(passed=True, stage="done")
    except BaseException as err:
        verdict["detail"] = f"{type(err).__name__}: {str(err)[:500]}"
    finally:
        if pid is not None:
            try:
                os.close(req_w)
            except OSError:
                pass
            try:
                os.kill(pid, 9)  # SIGKILL (importing signal costs ~10 ms)
                os.waitpid(pid, 0)
            except OSError:
                pass
        if channel is not None:
            verdict["output"] = channel.finish_output(0.05)
        os.write(verdict_fd, (json.dumps(verdict) + "\n").encode())


if __name__ == "__main__":
    if sys.argv[1:2] == ["checker"]:
        checker_main()
    else:
        sys.exit("usage: _sandbox_proc.py checker")
