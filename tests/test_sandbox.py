"""Adversarial programs against the code sandbox.

Each program is built so that the attack *succeeding* would make ``f(1) == 2`` (or fake a pass);
every one must score 0.0, and afterwards this test process must be intact: alive, no sandbox
processes left, no scratch directories left, the sandbox still working.
"""

from __future__ import annotations

import os
import socket
import stat
import tempfile
import time

import pytest
from dlm_trl_rewards import code

TEST = "def check(candidate):\n    assert candidate(1) == 2\n"
FAST = code.SandboxConfig(timeout_s=2.0, cpu_s=2, max_workers=2)


def _sandbox_processes() -> list[str]:
    """Live processes (zombies excluded) running as a sandbox uid (uid_base and up), as 'pid:uid'."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                uid = os.stat(f"/proc/{entry}").st_uid
                with open(f"/proc/{entry}/stat") as fh:
                    state = fh.read().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            if FAST.uid_base <= uid < FAST.uid_base + 64 * 4096 and state not in ("Z", "X"):
                found.append(f"{entry}:{uid}")
    return found


def _scratch_dirs() -> set[str]:
    return {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("dlm_trl_sbx")}


@pytest.fixture
def healthy():
    """Assert the trainer-side invariants after each adversarial program."""
    before_dirs = _scratch_dirs()
    pid = os.getpid()
    yield
    assert os.getpid() == pid
    deadline = time.monotonic() + 3
    while _sandbox_processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _sandbox_processes() == [], "sandbox processes outlived their program"
    assert _scratch_dirs() <= before_dirs, "scratch directory left behind"
    assert code.run_check("def f(x):\n    return x + 1\n", TEST, "f", config=FAST).passed  # still works


def _score(program: str, config: code.SandboxConfig = FAST, test: str = TEST) -> code.SandboxResult:
    start = time.monotonic()
    result = code.run_check(program, test, "f", config=config)
    assert time.monotonic() - start < config.timeout_s + 5, "the wall-clock limit did not hold"
    assert not result.passed, f"attack scored 1: {result}"
    return result


def test_isolation_is_reported_once(caplog):
    report = code.isolation()
    assert report["process"] and report["rlimits"]
    if os.geteuid() == 0:
        assert report["uid"], "running as root, the sandbox must drop to an unprivileged uid"


def test_an_honest_program_may_use_its_scratch_dir_and_the_stdlib(healthy):
    program = (
        "import os, tempfile\n"
        "def f(x):\n"
        "    import collections, statistics, datetime, encodings.idna  # imported lazily, after the uid drop\n"
        "    with open('notes.txt', 'w') as fh:\n"
        "        fh.write(str(x))\n"
        "    with tempfile.NamedTemporaryFile('w', delete=False) as fh:\n"
        "        fh.write('1')\n"
        "    return int(open('notes.txt').read()) + int(open(fh.name).read())\n"
    )
    assert code.run_check(program, TEST, "f", config=FAST).passed


# ----------------------------------------------------------------------------- resource attacks


@pytest.mark.parametrize(
    "program",
    [
        pytest.param("def f(x):\n    while True:\n        pass\n", id="infinite-loop-in-call"),
        pytest.param("while True:\n    pass\n", id="infinite-loop-at-import"),
        pytest.param("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n", id="endless-output"),
    ],
)
def test_hangs_are_killed(program, healthy):
    assert _score(program).status == "timeout"


def test_fork_bomb(healthy):
    program = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    _score(program)


@pytest.mark.parametrize(
    "program",
    [
        pytest.param("x = bytearray(10**11)\ndef f(x):\n    return x + 1\n", id="one-huge-allocation"),
        pytest.param("def f(x):\n    a = []\n    while True:\n        a.append(' ' * 10**7)\n", id="growing"),
    ],
)
def test_memory_bombs(program, healthy):
    assert "MemoryError" in _score(program, code.SandboxConfig(timeout_s=5.0, memory_mb=512)).detail


def test_huge_output_is_capped(healthy):
    program = "print('y' * 50_000_000)\ndef f(x):\n    return x\n"
    result = _score(program)
    assert len(result.output) <= FAST.max_output_bytes and result.output.startswith("yyy")


@pytest.mark.parametrize(
    "program",
    [
        pytest.param("def f(x):\n    return f(x) + 1\n", id="plain"),  # RecursionError
        pytest.param(
            "import sys\nsys.setrecursionlimit(10**8)\n"
            "def f(x):\n    a = []\n    for _ in range(10**5):\n        a = [a]\n    return len(repr(a)) and 2\n",
            id="c-stack",
        ),  # recursion in C (repr): crashes or errors the runner
    ],
)
def test_recursion_bombs(program, healthy):
    _score(program)


def test_big_file_is_refused(healthy):
    program = "def f(x):\n    open('big', 'wb').write(b'0' * (64 << 20))\n    return x + 1\n"
    _score(program)


# ----------------------------------------------------------------------------- escapes


def test_cannot_write_outside_scratch(tmp_path, healthy):
    target = tmp_path / "owned"
    target.mkdir()
    os.chmod(tmp_path, 0o755)
    os.chmod(target, 0o755)
    program = f"def f(x):\n    open({str(target / 'pwned')!r}, 'w').write('x')\n    return x + 1\n"
    _score(program)
    assert not (target / "pwned").exists()


def test_cannot_write_to_world_writable_dirs(tmp_path, healthy):
    if not code.isolation()["landlock"]:
        pytest.skip("needs Landlock: without it a world-writable directory is writable by any uid")
    target = tmp_path / "public"
    target.mkdir()
    os.chmod(tmp_path, 0o755)
    os.chmod(target, 0o777)
    name = f"dlm_trl_pwned_{os.getpid()}"
    program = (
        "def f(x):\n"
        f"    for d in ({str(target)!r}, '/dev/shm', '/var/tmp'):\n"
        f"        open(d + '/{name}', 'w').write('x')\n"
        "    return x + 1\n"
    )
    _score(program)
    assert not (target / name).exists() and not os.path.exists(f"/dev/shm/{name}")


def test_cannot_read_the_parents_secret(tmp_path, healthy):
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cret")
    os.chmod(secret, stat.S_IRUSR | stat.S_IWUSR)  # 0600, owned by this (test) user
    os.chmod(tmp_path, 0o755)
    program = f"def f(x):\n    return x + (open({str(secret)!r}).read() == 's3cret')\n"
    result = _score(program)
    assert "PermissionError" in result.detail or "FileNotFoundError" in result.detail  # hidden /tmp
    if os.path.exists("/etc/shadow") and os.geteuid() == 0:  # a root-only file outside the temp dir
        result = _score("def f(x):\n    return x + len(open('/etc/shadow').read()[:1])\n")
        assert "PermissionError" in result.detail


def test_cannot_see_the_test_or_the_environment(healthy, monkeypatch):
    monkeypatch.setenv("DLM_TRL_TEST_SECRET", "hunter2")
    # stdin is /dev/null; the trainer's environment is not passed on; /proc of others is closed
    program = (
        "import os, sys\n"
        "def f(x):\n"
        "    seen = sys.stdin.read() + repr(dict(os.environ))\n"
        "    for p in ('/proc/1/environ', '/proc/1/cmdline', '/proc/1/fd/0'):\n"
        "        try:\n"
        "            seen += open(p, 'rb').read().decode('latin-1')\n"
        "        except OSError:\n"
        "            pass\n"
        "    return x + ('check' in seen or 'hunter2' in seen)\n"
    )
    _score(program)


def test_no_network(healthy):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.setblocking(False)
    port = server.getsockname()[1]
    program = (
        "import socket\n"
        "def f(x):\n"
        "    s = socket.socket()\n"
        "    s.settimeout(1)\n"
        f"    s.connect(('127.0.0.1', {port}))\n"
        "    return x + 1\n"
    )
    _score(program)
    program_out = "import socket\ndef f(x):\n    socket.socket().connect(('1.1.1.1', 80))\n    return x + 1\n"
    _score(program_out)
    with pytest.raises(BlockingIOError):
        server.accept()
    server.close()


def test_no_unix_sockets_of_the_host(healthy):
    if not code.isolation()["tmpfs"]:
        pytest.skip("needs a mount namespace to hide the host's temp directory")
    public = tempfile.mkdtemp(prefix="dlm_trl_sock_")
    os.chmod(public, 0o755)
    path = os.path.join(public, "service.sock")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    os.chmod(path, 0o777)  # anyone may connect: only hiding the directory protects it
    server.listen()
    server.setblocking(False)
    try:
        program = f"import socket\ndef f(x):\n    socket.socket(socket.AF_UNIX).connect({path!r})\n    return x + 1\n"
        assert "FileNotFoundError" in _score(program).detail
        with pytest.raises(BlockingIOError):
            server.accept()
    finally:
        server.close()
        os.unlink(path)
        os.rmdir(public)


def test_cannot_kill_the_parent_or_the_trainer(healthy):
    me = os.getpid()
    program = (
        "import os, signal\n"
        "def f(x):\n"
        "    os.kill(os.getppid(), signal.SIGKILL)\n"
        f"    os.kill({me}, signal.SIGKILL)\n"
        "    return x + 1\n"
    )
    _score(program)
    program_group = f"import os\ndef f(x):\n    os.killpg(os.getpgid({me}), 9)\n    return x + 1\n"
    _score(program_group)


# ----------------------------------------------------------------------------- faked success

WRONG = "def f(x):\n    return None\n"


@pytest.mark.parametrize(
    "program",
    [
        pytest.param("import sys\nsys.exit(0)\n", id="sys.exit(0)-before-check"),
        pytest.param("import os\nos._exit(0)\n", id="os._exit(0)-before-check"),
        pytest.param("import os\ndef f(x):\n    os._exit(0)\n", id="os._exit(0)-during-check"),
        pytest.param(
            WRONG + "import builtins\ndef check(candidate):\n    pass\nbuiltins.check = check\n"
            "builtins.AssertionError = type('Quiet', (Exception,), {})\n",
            id="patched-check-and-builtins",
        ),
        pytest.param(
            "import json\nprint(json.dumps({'nonce': '0' * 32, 'passed': True, 'stage': 'done'}))\n" + WRONG,
            id="printed-marker",
        ),
        pytest.param(
            "import json, os\nline = (json.dumps({'nonce': '0' * 32, 'passed': True}) + '\\n').encode()\n"
            "for fd in range(0, 256):\n    try:\n        os.write(fd, line)\n    except OSError:\n        pass\n"
            + WRONG,
            id="marker-on-every-fd",
        ),
        pytest.param("open('result.json', 'w').write('{\"passed\": true}')\n" + WRONG, id="result-file"),
        pytest.param(
            "class Yes:\n    def __eq__(self, other):\n        return True\ndef f(x):\n    return Yes()\n",
            id="always-equal-object",
        ),
        pytest.param(
            "class Two(int):\n    def __eq__(self, o):\n        return True\ndef f(x):\n    return Two(7)\n",
            id="int-subclass",
        ),
        pytest.param(
            "import gc\ndef f(x):\n    for o in gc.get_objects():\n        if callable(o) and getattr(o, '__name__', '') == 'check':\n"
            "            o.__code__ = (lambda c: None).__code__\n    return None\n",
            id="patch-check-via-gc",
        ),
    ],
)
def test_faked_success_scores_zero(program, healthy):
    _score(program)


def test_a_verdict_without_the_right_nonce_is_rejected(healthy, monkeypatch):
    # Deliver a different nonce to the checker than the one the trainer expects: its (honest,
    # passing) verdict must then be refused, as a forged line on the verdict channel would be.
    original = code._frame

    def other_nonce(obj):
        if "nonce" in obj:
            obj = dict(obj, nonce="0" * 32)
        return original(obj)

    monkeypatch.setattr(code, "_frame", other_nonce)
    result = code.run_check("def f(x):\n    return x + 1\n", TEST, "f", config=FAST)
    assert not result.passed and result.status == "sandbox_error"
