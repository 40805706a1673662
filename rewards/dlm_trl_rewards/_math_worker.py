"""Worker process for :mod:`dlm_trl_rewards.math`: runs math-verify on the worker's main thread.

Started by the pool in ``math.py`` (``python -I -c "...; main()"``); speaks JSON lines
on stdin/stdout (stdout is moved to a private descriptor first, so stray prints from sympy or
math-verify cannot corrupt the protocol). One request at a time:

``{"op": "verify", "gold": str, "pred": str, "timeout": float}`` ->
``{"status": "ok", "correct": bool}`` | ``{"status": "timeout"}`` | ``{"status": "error", "error": str}``

The per-item timeout is an interval timer (``SIGALRM``) on this process's main thread, raising an
exception derived from ``BaseException`` so that math-verify's ``except Exception`` blocks cannot
swallow it. math-verify's own signal-based timeouts are switched off (they would overwrite our
timer). The parent additionally kills this process if no answer arrives in time (code stuck in C).

Two private ops exist for the test-suite: ``{"op": "sleep", "seconds": s, "block_alarm": bool}``
and ``{"op": "crash"}``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time


class _ItemTimeout(BaseException):
    pass


_ARMED = False  # a late SIGALRM after an item finished must not hit the protocol loop


def _on_alarm(signum, frame):  # noqa: ARG001
    if _ARMED:
        raise _ItemTimeout()


_CONFIG = None


def _parse(text: str):
    """math-verify's parse with its default extraction, except that its unit stripping is off: it
    drops a trailing one- or two-letter "unit" (``4\\pi r^2 h`` -> ``4\\pi r^2``, ``a + b + c`` -> ``a +``).
    The reward strips units itself before sending (``5\\text{ cm}``, ``18 dollars``)."""
    global _CONFIG
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    if _CONFIG is None:
        from latex2sympy2_extended import NormalizationConfig

        norm = NormalizationConfig(
            basic_latex=True, units=False, malformed_operators=True, nits=True, boxed="all", equations=False
        )
        _CONFIG = [LatexExtractionConfig(normalization_config=norm), ExprExtractionConfig()]
    return parse(text, extraction_config=_CONFIG, parsing_timeout=None)


def _parse_gold(text: str):
    # A bare LaTeX gold ("\frac{1}{2}") needs an anchor to be found; try the text, then $...$, then \boxed{}.
    for candidate in (text, f"${text}$", f"\\boxed{{{text}}}"):
        parsed = _parse(candidate)
        if parsed:
            return parsed
    return []


def _verify(req: dict) -> dict:
    from math_verify import verify

    gold = _parse_gold(req["gold"])
    if not gold:
        return {"status": "error", "error": f"gold answer {req['gold'][:80]!r} could not be parsed"}
    pred = _parse(req["pred"])
    if not pred:
        return {"status": "ok", "correct": False}
    return {"status": "ok", "correct": bool(verify(gold, pred, timeout_seconds=None))}


def _handle(req: dict) -> dict:
    global _ARMED
    op = req.get("op")
    timeout = float(req.get("timeout") or 0)
    if op == "crash":
        os._exit(17)
    if op == "sleep" and req.get("block_alarm"):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    try:
        if timeout > 0:
            _ARMED = True
            signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            if op == "verify":
                return _verify(req)
            if op == "sleep":
                time.sleep(float(req["seconds"]))
                return {"status": "ok", "correct": False}
            return {"status": "error", "error": f"unknown op {op!r}"}
        finally:
            _ARMED = False
            signal.setitimer(signal.ITIMER_REAL, 0)
    except _ItemTimeout:
        return {"status": "timeout"}
    except Exception as err:  # a bad item must not take the worker down
        return {"status": "error", "error": f"{type(err).__name__}: {str(err)[:200]}"}


def main() -> None:
    proto = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)  # anything printed from now on goes to stderr
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    import math_verify  # noqa: F401  (pay the import once, before saying ready)

    proto.write(json.dumps({"status": "ready", "pid": os.getpid()}) + "\n")
    for line in sys.stdin:
        try:
            req = json.loads(line)
        except ValueError:
            proto.write(json.dumps({"status": "error", "error": "bad request"}) + "\n")
            continue
        proto.write(json.dumps(_handle(req)) + "\n")


if __name__ == "__main__":
    main()
