"""Math answer rewards: ``math_accuracy`` (math-verify equivalence) and ``gsm8k_accuracy`` (d1-style).

Both follow TRL's signature ``f(prompts, completions, *, answer, **columns) -> list[float | None]``.

The gold answer (column ``answer``) may be a final answer (``42``, ``\\sqrt{51}``, ``\\text{Evelyn}``), a full
solution whose last ``\\boxed{}`` is the answer (MATH), or a solution ending in ``#### 42`` (GSM8K). The
completion's answer is taken from, in order: the last ``<answer>...</answer>`` pair (the last
``\\boxed{}`` inside it if any), else the last ``\\boxed{}``, else the last number in the text.

Both answers are then read as math (:func:`_prepare`, pure Python) and compared by math-verify in
math mode (sent as ``\\boxed{...}``), so bare LaTeX such as ``\\sqrt{51}``, ``\\pi`` or ``p - q`` is
parsed, not skipped for the first number in it. Conventions (those of MATH answers):

* ``$...$``, ``\\(...\\)``, ``\\[...\\]``, ``\\$`` and a leading "The (final) answer is" are dropped;
  ``\\dfrac``/``\\tfrac`` are ``\\frac``; a trailing period is dropped.
* units after a number are dropped: ``5\\text{ cm}^2``, ``12\\mbox{ inches}``, ``18 dollars``, ``5 cm``
  (math-verify's own unit list is switched off: it reads ``4\\pi r^2 h`` as ``4\\pi r^2``, ``3c`` as ``3``).
* percent signs are dropped (``50\\%`` = ``50``, and so ``0.5`` is not ``50\\%``); degrees ``^\\circ``/``°``
  are dropped by math-verify (``30^\\circ`` = ``30``; radians are not degrees).
* thousands separators ``1,000``, ``10,\\!080``, ``10{,}080``, ``10\\,080`` are one number; ``(1,200)``
  stays a tuple and ``1, 2`` a set.
* tuples and intervals keep their brackets (``(-2,1)`` is not ``(-2,1]``); ``x = 3`` and ``x \\in [0,1)``
  equal ``3`` and ``[0,1)``; ``y = 2x + 3`` is compared as an equation.
* words (``\\text{Evelyn}``, ``Evelyn``, ``odd``) compare as case-insensitive words, never as products of
  symbols (``Evenly`` is not ``Evelyn``); multiple choice ``(C)``, ``\\text{(C)}``, ``\\textbf{(C)}``, ``C``
  are the letter.
* an answer that is a sentence with math in it ("so $x = 3$") goes to math-verify's own extraction;
  an answer with unbalanced braces scores 0.0 (a gold one counts as missing).

Verification runs in a pool of worker *processes* (:class:`VerifyPool`). math-verify's own timeouts
use ``signal.alarm``, which only works on the main thread, while TRL may call rewards from other
threads (async rewards run on a daemon event-loop thread). The workers are plain subprocesses
running ``dlm_trl_rewards._math_worker`` (not a ``ProcessPoolExecutor``): nothing depends on the
trainer's multiprocessing start method, the trainer's ``__main__`` (a recipe importing torch) is
never re-imported, no CUDA process is forked, and a stuck item can be killed together with the
one worker running it, which a ``ProcessPoolExecutor`` cannot do. Each item has a real timeout: a
``SIGALRM`` timer on the worker's main thread and, if the worker does not answer within
``timeout + grace`` (stuck in C code), the worker is killed. A dead worker is restarted on its
next item; it never breaks later calls. Workers start lazily and are reused; a forked child of
the trainer starts its own pool instead of sharing the parent's.

Counters (cumulative per process, thread-safe) are returned by :func:`metrics`:

``calls``            completions scored
``verified``         sent to a worker (rows with a gold answer and an extracted prediction)
``timeouts``         items that hit the timeout (scored 0.0)
``hard_timeouts``    of those, items whose worker had to be killed
``errors``           items whose worker reported an error or died (scored 0.0)
``worker_starts``    worker processes started (lazily; restarts included)
``gold_unparsed``    rows whose gold answer is missing or has unbalanced braces (scored ``None``)

When TRL passes ``log_metric`` (TRL 1.16 does), the per-batch timeout and error counts are also
logged as ``math_accuracy/timeouts`` and ``math_accuracy/errors``.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import queue
import re
import selectors
import signal
import subprocess
import sys
import threading
import time
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, NamedTuple

from ._common import column, completion_to_text, extract_answer_tag, gsm8k_gold, last_boxed, last_number

__all__ = [
    "math_accuracy",
    "gsm8k_accuracy",
    "extract_math_answer",
    "is_equivalent",
    "metrics",
    "reset_metrics",
    "configure",
    "VerifyPool",
]

logger = logging.getLogger(__name__)

_METRIC_NAMES = (
    "calls",
    "verified",
    "timeouts",
    "hard_timeouts",
    "errors",
    "worker_starts",
    "gold_unparsed",
)
_metrics = dict.fromkeys(_METRIC_NAMES, 0)
_metrics_lock = threading.Lock()


def _count(**deltas: int) -> None:
    with _metrics_lock:
        for k, v in deltas.items():
            _metrics[k] += v


def metrics() -> dict[str, int]:
    """A snapshot of this module's counters (see the module docstring for their meaning)."""
    with _metrics_lock:
        return dict(_metrics)


def reset_metrics() -> None:
    with _metrics_lock:
        for k in _metrics:
            _metrics[k] = 0


# --------------------------------------------------------------------------------------------
# worker pool


class _Worker:
    """One ``_math_worker`` subprocess, used by one thread at a time."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self._buf = b""

    def _start(self, startup_timeout: float) -> None:
        # -I: the trainer's cwd and PYTHON* variables cannot shadow modules; the package's parent
        # directory is put on sys.path explicitly so an uninstalled checkout works too.
        pkg_parent = str(Path(__file__).resolve().parents[1])
        boot = f"import sys; sys.path.insert(0, {pkg_parent!r}); from dlm_trl_rewards._math_worker import main; main()"
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", "1")
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-u", "-c", boot],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            start_new_session=True,  # a Ctrl-C aimed at the trainer's terminal does not reach it
            close_fds=True,
        )
        self._buf = b""
        _count(worker_starts=1)
        if self._read_line(time.monotonic() + startup_timeout) is None:
            self.kill()
            raise RuntimeError("math-verify worker did not start (is math-verify installed?)")

    def _read_line(self, deadline: float) -> dict | None:
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._buf:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    return None
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise EOFError("worker exited")
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def kill(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass
        self.proc = None

    def close(self) -> None:
        if self.proc is not None and self.proc.stdin is not None:
            try:
                self.proc.stdin.close()  # the worker exits at end of input
                self.proc.wait(timeout=2)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self.kill()

    def call(self, req: dict, timeout: float, grace: float, startup_timeout: float) -> dict:
        if self.proc is None or self.proc.poll() is not None:
            if self.proc is not None:
                self.kill()
            self._start(startup_timeout)
        assert self.proc is not None and self.proc.stdin is not None
        try:
            self.proc.stdin.write((json.dumps(dict(req, timeout=timeout)) + "\n").encode())
            self.proc.stdin.flush()
            reply = self._read_line(time.monotonic() + timeout + grace)
        except (BrokenPipeError, EOFError, OSError, ValueError) as err:
            self.kill()
            return {"status": "error", "error": f"worker died: {err}"}
        if reply is None:  # stuck where SIGALRM cannot reach (C code): kill it, restart on next use
            self.kill()
            return {"status": "timeout", "hard": True}
        return reply


class VerifyPool:
    """A bounded pool of math-verify worker processes with a per-item timeout.

    Workers start lazily (the first item pays ~1 s for importing math-verify) and are reused.
    ``map`` may be called from any thread, concurrently; at most ``workers`` items run at once.
    """

    def __init__(
        self, workers: int = 2, timeout: float = 5.0, grace: float = 2.0, startup_timeout: float = 120.0
    ):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        self.workers, self.timeout, self.grace, self.startup_timeout = (
            workers,
            timeout,
            grace,
            startup_timeout,
        )
        self._idle: queue.LifoQueue[_Worker] = queue.LifoQueue()
        for _ in range(workers):
            self._idle.put(_Worker())
        self._all = list(self._idle.queue)
        self._pid = os.getpid()

    def _run_items(
        self, reqs: list[dict], results: list[dict | None], next_index: list[int], lock: threading.Lock
    ) -> None:
        worker = self._idle.get()
        try:
            while True:
                with lock:
                    i = next_index[0]
                    next_index[0] += 1
                if i >= len(reqs):
                    return
                try:
                    results[i] = worker.call(reqs[i], self.timeout, self.grace, self.startup_timeout)
                except RuntimeError as err:  # worker failed to start
                    results[i] = {"status": "error", "error": str(err)}
        finally:
            self._idle.put(worker)

    def map(self, reqs: list[dict]) -> list[dict]:
        """Run each request on a worker; returns one reply dict per request, in order."""
        if not reqs:
            return []
        results: list[dict | None] = [None] * len(reqs)
        next_index, lock = [0], threading.Lock()
        n_threads = min(self.workers, len(reqs))
        threads = [
            threading.Thread(target=self._run_items, args=(reqs, results, next_index, lock), daemon=True)
            for _ in range(n_threads - 1)
        ]
        for t in threads:
            t.start()
        self._run_items(reqs, results, next_index, lock)
        for t in threads:
            t.join()
        return [r if r is not None else {"status": "error", "error": "not run"} for r in results]

    def close(self) -> None:
        if os.getpid() != self._pid:  # inherited through fork: the processes are not ours
            return
        for w in self._all:
            w.close()


_pool: VerifyPool | None = None
_pool_lock = threading.Lock()
_config: dict[str, Any] = {
    "workers": int(os.environ.get("DLM_TRL_MATH_WORKERS", 0)) or max(1, min(4, os.cpu_count() or 1)),
    "timeout": float(os.environ.get("DLM_TRL_MATH_TIMEOUT", 5.0)),
}


def configure(*, workers: int | None = None, timeout: float | None = None) -> None:
    """Change the default pool's size or per-item timeout (seconds).

    The current pool (if any) is closed; the next call starts a new one. Defaults come from the
    environment variables ``DLM_TRL_MATH_WORKERS`` and ``DLM_TRL_MATH_TIMEOUT`` (5 s).
    """
    global _pool
    with _pool_lock:
        if workers is not None:
            _config["workers"] = int(workers)
        if timeout is not None:
            _config["timeout"] = float(timeout)
        old, _pool = _pool, None
    if old is not None:
        old.close()


def _get_pool() -> VerifyPool:
    global _pool
    with _pool_lock:
        if _pool is None or _pool._pid != os.getpid():  # a forked child must not share the parent's workers
            _pool = VerifyPool(workers=_config["workers"], timeout=_config["timeout"])
        return _pool


@atexit.register
def _shutdown() -> None:
    if _pool is not None:
        _pool.close()


# --------------------------------------------------------------------------------------------
# extraction and normalisation (pure Python, in the calling process)


def extract_math_answer(text: str) -> str | None:
    """The completion's answer span: ``<answer>`` content, else the last ``\\boxed{}`` (kept
    boxed), else the last number; ``None`` if there is none. :func:`_prepare` then reads it as math."""
    tagged = extract_answer_tag(text)
    if tagged is not None:
        return tagged or None
    boxed = last_boxed(text)
    if boxed is not None:
        return f"\\boxed{{{boxed}}}"
    return last_number(text)


_MAX_REWRITE = 1000  # longer spans are prose: they go to math-verify's own extraction unchanged
# Replaced in order: dollar signs and percent signs go, \dfrac/\tfrac are \frac, a few Unicode symbols.
_REPLACEMENTS = {"\\$": "", "$": "", "\\%": "", "%": "", "\\dfrac": "\\frac", "\\tfrac": "\\frac", "−": "-"}
_REPLACEMENTS |= {
    "°": "^\\circ",
    "π": "\\pi",
    "∞": "\\infty",
    "√": "\\sqrt",
    "×": "\\times",
    "≤": "\\le",
    "≥": "\\ge",
}
_TEXT_CMD = r"\\(?:text|textbf|textit|textrm|textnormal|mbox|mathrm)\s*"
_TEXT_GROUP_RE = re.compile(_TEXT_CMD + r"\{([^{}]*)\}")
_CONNECTIVE_RE = re.compile(_TEXT_CMD + r"\{\s*(?:and|or)\s*\}")
_NAMED_GROUP_RE = re.compile(r"\\(?:operatorname|mathbf|mathbb|mathcal|begin|end)\s*\{[^{}]*\}")
_PREFIX_RE = re.compile(
    r"^(?:(?:so|thus|hence|therefore),?\s+)?(?:the\s+)?(?:final\s+)?answer\b\s*(?:is\b|:|=)?\s*:?\s*", re.I
)
_OUTER_RE = re.compile(r"^\\[\[(]|\\[\])]$")  # \( \) \[ \] around the whole answer
_DIGIT_SPACE_RE = re.compile(r"(?<=\d)\\[,!;: ](?=\d)")  # 10\,000
_SPACE_RE = re.compile(r"(?<!\\)\\[,;: ]|~")  # LaTeX spaces, "5\,\text{cm}"
_POWER = r"(?:\s*\^\s*\{?[23]\}?)?\s*$"  # cm^2, m^3
# A unit after a number, a closing brace or parenthesis: "5\text{ cm}^2", "12\mbox{ inches}", "18 dollars",
# "5 cm"; bare words only after a number that is no exponent ("x^2 yz" keeps its variables).
_UNIT_RES = (
    re.compile(r"(?<=[\d})])\s*" + _TEXT_CMD + r"\{\s*[A-Za-z][A-Za-z .]*\}" + _POWER),
    re.compile(
        r"(?<=[\d})])(?<![\^_]\d)(?<![\^_]\{\d\})(?:\s+(?:[A-Za-z]{3,}|cm|mm|km|kg|ft|in|mi|lb|oz|hr|ml)\.?)+"
        + _POWER
    ),
)
_AND_RE = re.compile(r"(?<=[^\s{])\s+(?:and|or)\s+(?=[^\s}])")
_WORDS_RE = re.compile(r"[A-Za-z][A-Za-z' ]*")
_PROSE_RE = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{3,}")  # a word of 3+ letters that is no \command


class _Prepared(NamedTuple):
    """One answer read for comparison."""

    kind: str  # "math" (value is "\\boxed{...}"), "text", or "raw" (prose for math-verify's own extraction)
    value: str
    words: str | None  # lower-case words when the answer is letters only (\text{} unwrapped, "(C)" -> "c")


def _unwrap_text(s: str) -> str:
    for _ in range(3):  # \textbf{\text{...}}
        s = _TEXT_GROUP_RE.sub(lambda m: m.group(1), s)
    return s


def _balanced(s: str) -> bool:
    depth = 0
    for ch in s.replace("\\{", "").replace("\\}", ""):
        depth += (ch == "{") - (ch == "}")
        if depth < 0:
            return False
    return depth == 0


def _normalise(s: str) -> str:
    for old, new in _REPLACEMENTS.items():
        s = s.replace(old, new)
    s = _OUTER_RE.sub("", s.strip()).strip()
    s = _PREFIX_RE.sub("", s)
    s = _DIGIT_SPACE_RE.sub("", s).replace("\\!", "")
    s = _SPACE_RE.sub(" ", s).strip().rstrip(".").strip()
    changed = True
    while changed:
        changed = False
        for unit in _UNIT_RES:
            m = unit.search(s)
            if m and m.start() > 0:
                s, changed = s[: m.start()].rstrip(), True
    return s


def _prepare(span: str | None) -> _Prepared | None:
    """Read one answer span (gold or prediction) for comparison; ``None`` if nothing usable."""
    try:
        s = span.strip() if isinstance(span, str) else ""
        boxed = last_boxed(s)
        if boxed is not None:
            s = boxed
        if len(s) > _MAX_REWRITE:
            return _Prepared("raw", s, None)
        s = _normalise(s)
        if not s or not _balanced(s):
            return None
        unwrapped = _unwrap_text(s).replace("\\ ", " ").replace("~", " ").strip().rstrip(".").strip()
        letter = re.fullmatch(r"\(([A-Za-z])\)", unwrapped)  # multiple choice "(C)"
        words = letter.group(1) if letter else unwrapped if _WORDS_RE.fullmatch(unwrapped) else None
        words = " ".join(words.lower().split()) if words else None
        if words and (unwrapped != s or re.search("[A-Za-z]{3}", words)):
            return _Prepared("text", s, words)
        s = _AND_RE.sub(", ", s)  # "2 and 3" is the list "2, 3"
        bare = _unwrap_text(_NAMED_GROUP_RE.sub(" ", _CONNECTIVE_RE.sub(" ", s)))
        if _PROSE_RE.search(bare):  # "so $x = 3$": let math-verify find the math in the original
            return _Prepared("raw", span.strip(), words)
        return _Prepared("math", f"\\boxed{{{s}}}", words)
    except Exception:  # malformed model output must never raise
        logger.debug("could not read answer %r", str(span)[:80], exc_info=True)
        return None


def _plain_decimal(text: str) -> Decimal | None:
    t = text.strip().replace(",", "")
    if t.startswith("\\boxed{") and t.endswith("}"):
        t = t[7:-1].strip()
    t = t.strip("$ ").rstrip(".")
    if not t or len(t) > 50 or not all(c.isdigit() or c in "+-." for c in t):
        return None
    try:
        return Decimal(t)
    except InvalidOperation:
        return None


def _score(pairs: list[tuple[str | None, str | None]]) -> tuple[list[float | None], dict[str, int]]:
    """Score (gold, pred) pairs; returns the scores and this batch's counters."""
    scores: list[float | None] = [None] * len(pairs)
    batch = dict.fromkeys(_METRIC_NAMES, 0)
    batch["calls"] = len(pairs)
    todo: list[int] = []
    reqs: list[dict] = []
    for i, (gold_span, pred_span) in enumerate(pairs):
        gold = _prepare(gold_span) if gold_span is not None else None
        if gold is None:
            batch["gold_unparsed"] += 1
            continue
        pred = _prepare(pred_span) if pred_span is not None else None
        if pred is None:
            scores[i] = 0.0
        elif "text" in (gold.kind, pred.kind):  # words compare as words, never as products of symbols
            scores[i] = float(gold.words is not None and gold.words == pred.words)
        else:
            todo.append(i)
            reqs.append({"op": "verify", "gold": gold.value, "pred": pred.value})
    if todo:
        batch["verified"] = len(todo)
        replies = _get_pool().map(reqs)
        for i, reply in zip(todo, replies, strict=True):
            status = reply.get("status")
            if status == "ok":
                scores[i] = 1.0 if reply.get("correct") else 0.0
                continue
            scores[i] = 0.0
            if status == "timeout":
                batch["timeouts"] += 1
                batch["hard_timeouts"] += int(bool(reply.get("hard")))
            else:
                batch["errors"] += 1
                logger.debug("math-verify error on item %d: %s", i, reply.get("error"))
    _count(**batch)
    return scores, batch


def is_equivalent(gold: str, prediction: str) -> bool:
    """Whether ``prediction`` (an answer span, e.g. ``"\\boxed{1/2}"`` or ``"0.5"``) equals ``gold`` (any
    gold layout: final answer, ``\\boxed{}`` solution, ``#### 42``) under the conventions above.

    Runs through the same worker pool (safe from any thread); a timeout counts as not equivalent.
    """
    g = gsm8k_gold(gold)
    scores, _ = _score([(g, prediction)])
    return scores[0] == 1.0


def _log(columns: dict[str, Any], name: str, batch: dict[str, int]) -> None:
    log_metric = columns.get("log_metric")
    if callable(log_metric):
        try:
            log_metric(f"{name}/timeouts", float(batch["timeouts"]))
            log_metric(f"{name}/errors", float(batch["errors"]))
        except Exception:  # logging must never break scoring
            logger.debug("log_metric failed", exc_info=True)


def math_accuracy(prompts: list[Any], completions: list[Any], **columns: Any) -> list[float | None]:
    """1.0 if the completion's answer is mathematically equivalent to column ``answer``, else 0.0.

    ``None`` for rows without a gold answer. Timeouts and worker errors score 0.0 and are counted
    in :func:`metrics`.
    """
    answers = column(columns, "answer", len(completions), "math_accuracy")
    pairs = [
        (gsm8k_gold(a), extract_math_answer(completion_to_text(c)))
        for a, c in zip(answers, completions, strict=True)
    ]
    scores, batch = _score(pairs)
    _log(columns, "math_accuracy", batch)
    return scores


def _number_in(span: str) -> Decimal | None:
    value = _plain_decimal(span)
    if value is not None:
        return value
    num = last_number(span)
    return Decimal(num) if num is not None else None


def gsm8k_accuracy(prompts: list[Any], completions: list[Any], **columns: Any) -> list[float | None]:
    """d1-style numeric correctness: the extracted number equals the ``####`` number of ``answer``.

    The completion's number is the last number of (in order) the last ``<answer>`` content, the
    last ``\\boxed{}`` content, or the whole text. Comparison is exact decimal equality (``"18.00"``
    equals ``"18"``; thousands separators ignored). No math-verify, no subprocess. d1 scores a
    correct answer 2.0; this returns 1.0 (use ``reward_weights`` to rescale). ``None`` when the
    gold answer is not a number.
    """
    answers = column(columns, "answer", len(completions), "gsm8k_accuracy")
    out: list[float | None] = []
    for a, c in zip(answers, completions, strict=True):
        gold_text = gsm8k_gold(a)
        gold = _plain_decimal(gold_text) if gold_text is not None else None
        if gold is None:
            out.append(None)
            continue
        text = completion_to_text(c)
        span = extract_answer_tag(text)
        if span is None:
            span = last_boxed(text)
        pred = _number_in(span if span is not None else text)
        out.append(1.0 if pred is not None and pred == gold else 0.0)
    return out
