"""Math answer verification: the task reward r(completion, gold) in {0, 1}.

Pipeline for one (completion, gold) pair:

  1. `extract_answer` takes the model's final answer: the last complete `\\boxed{...}` /
     `\\fbox{...}` (nested braces; one cut off before its closing brace is passed over), else the
     last of a `#### n` line and "the answer is ...".
  2. Fast path, in the calling process and linear in the input length (steps 1 and 2 live in
     `tasks.answers`): the two answers are
     canonicalized (`canonical_answer`: LaTeX spacing, `\\dfrac`, units, degrees, thousands
     separators, ...; `clean_latex` says which words count as units). Equal strings are equal; an
     `x =` prefix on one side is ignored, different letters on both sides (`x = 1` against `y = 1`)
     are unequal. A gold word ("east", `\\text{Evelyn}`) is compared as case-insensitive text. If both are
     plain numbers (integer, decimal, `a/b`, `\\frac{a}{b}`, mixed number) they are compared as exact
     rationals and the verdict is final: 6 != 6.0000001 and 1/3 != 0.333333. `p\\%` against a number
     without `%` also matches p/100; two percentages match only as equal numbers.
  3. Otherwise math-verify parses both to sympy and compares them (sets, intervals, tuples, matrices,
     `\\pm`, equations, symbolic simplification; a `\\pm` inside braces is first written as its two
     values by `expand_plus_minus`). Its numeric tolerances (6-digit float rounding,
     `evalf(chop=True)`, which rounds anything below ~1e-15 to 0) accept different numbers such as
     1/2^{99} = 1/2^{98} and 1/2004! = 1/2006!, so a match is vetoed when the two objects contain
     numbers that differ: exactly when their difference is rational, else when
     |a - b| > 1e-12 max(|a|, |b|) at 30 significant digits (free symbols are first set to fixed
     rationals, so x + 1/2^{99} != x + 1/2^{98}; equations are not vetoed), and a decimal never
     equals an irrational number (3.141592653589793 != pi).

Step 3 runs in a pool of worker processes (`VerifierPool`). Each item has a hard wall-clock timeout;
a worker that exceeds it (sympy can loop in C code, e.g. on `9^{9^{9^{9}}}`) is killed and replaced
by a warm fork, and the item scores 0. Workers also run under an address-space limit (default 4 GiB), so a runaway
allocation fails with MemoryError instead of exhausting the machine.
"""

from __future__ import annotations

import atexit
import dataclasses
import functools
import logging
import multiprocessing
import multiprocessing.connection
import multiprocessing.reduction
import os
import re
import signal
import time
from typing import Sequence

import numpy as np

from rl_sharpen.tasks.answers import clean_latex, expand_plus_minus, extract_answer, fast_verdict, too_long

_REL_TOL = 1e-12
_DECIMAL_RE = re.compile(r"(?<![\d.])\d*\.\d+")  # decimals as written: "3.14159", ".5"
_EVAL_DIGITS = 30

# ---------------------------------------------------------------------------------------------
# Symbolic comparison (runs inside worker processes).


def _as_number(expr):
    import sympy

    value = sympy.N(expr, _EVAL_DIGITS)
    return value if value.is_number and value.is_finite else None


def _numbers_differ(a, b) -> bool:
    """True iff a != b provably: exactly when a - b is rational, else |a - b| > 1e-12 max(|a|, |b|)."""
    difference = (a - b).doit()
    if difference.is_Rational:  # sympy evaluated it exactly, e.g. 1/2004! - 1/2006!
        return difference != 0
    x, y = _as_number(a), _as_number(b)
    if x is None or y is None:
        return False
    return bool(abs(x - y) > _REL_TOL * max(abs(x), abs(y)))


def _substitute_symbols(a, b, point: int = 0):
    """Replaces each free symbol (shared by name) with a fixed, distinct non-integer rational; another
    `point` gives other values."""
    import sympy

    names = sorted({s.name for s in a.free_symbols | b.free_symbols})
    values = {name: sympy.Rational(2 * i + 7 + 11 * point, i + 3 + 2 * point) for i, name in enumerate(names)}
    sub = lambda e: e.subs({s: values[s.name] for s in e.free_symbols})  # noqa: E731
    return sub(a), sub(b)


def _unwrap_assignment(e):
    """`x = v` -> v (math-verify compares an assignment by its right-hand side)."""
    import sympy

    return e.rhs if isinstance(e, sympy.Eq) and isinstance(e.lhs, sympy.Symbol) else e


def _equations_differ(a, b) -> bool:
    """True iff the equations a and b provably differ: lhs - rhs of each are not proportional (their
    ratio differs between two points), as "2x = 5" and "x^2 = 5" are; "x + y = 3" and "y = 3 - x"
    agree."""
    try:
        ratios = []
        for point in (0, 1):
            x, y = (_as_number(e) for e in _substitute_symbols(a.lhs - a.rhs, b.lhs - b.rhs, point))
            if x is None or y is None or y == 0:
                return False
            ratios.append(x / y)
    except TypeError:  # sides that do not subtract, e.g. sets
        return False
    return bool(abs(ratios[0] - ratios[1]) > _REL_TOL * max(abs(ratios[0]), abs(ratios[1])))


def _numeric_sort_key(e) -> tuple[float, float] | None:
    import sympy

    n = _as_number(e)
    return None if n is None else (float(sympy.re(n)), float(sympy.im(n)))


def _provably_distinct(a, b, decimals: frozenset = frozenset()) -> bool:
    """Veto for math-verify's tolerant matches: True iff aligned numbers in a and b differ, one is an
    equation and the other a value, or one is a decimal written in the answers (|value| in `decimals`)
    and the other provably irrational."""
    import sympy
    from sympy.matrices import MatrixBase

    equations = isinstance(a, sympy.Eq) and isinstance(b, sympy.Eq)
    if equations and not (isinstance(a.lhs, sympy.Symbol) and isinstance(b.lhs, sympy.Symbol)):
        return _equations_differ(a, b)
    a, b = _unwrap_assignment(a), _unwrap_assignment(b)
    if isinstance(a, sympy.Eq) != isinstance(b, sympy.Eq):  # an equation is not a value: "x^2 = 5" vs 5
        return True
    if isinstance(a, MatrixBase) and isinstance(b, MatrixBase):
        return a.shape == b.shape and any(_provably_distinct(x, y, decimals) for x, y in zip(a, b))
    if isinstance(a, sympy.Interval) and isinstance(b, sympy.Interval):
        return _provably_distinct(a.start, b.start, decimals) or _provably_distinct(a.end, b.end, decimals)
    containers = (sympy.Tuple, sympy.FiniteSet)
    if isinstance(a, containers) and isinstance(b, containers):
        if len(a) != len(b):
            return False
        xs, ys = list(a.args), list(b.args)
        if isinstance(a, sympy.FiniteSet) or isinstance(b, sympy.FiniteSet):  # align by value
            if any(_numeric_sort_key(e) is None for e in xs + ys):
                return False
            xs, ys = sorted(xs, key=_numeric_sort_key), sorted(ys, key=_numeric_sort_key)
        return any(_provably_distinct(x, y, decimals) for x, y in zip(xs, ys))
    if isinstance(a, sympy.Expr) and isinstance(b, sympy.Expr):
        written = lambda x: x.is_Float and abs(float(x)) in decimals  # noqa: E731 (not e^{0.5}, a Float too)
        if (written(a) and b.is_rational is False) or (written(b) and a.is_rational is False):
            return True  # a decimal is rational: 3.141592653589793 is not pi, however many digits it has
        if a.free_symbols or b.free_symbols:
            a, b = _substitute_symbols(a, b)
        return _numbers_differ(a, b)
    return False


@functools.lru_cache(maxsize=4096)
def _parse(answer: str) -> list:
    """math-verify's parse of a cleaned answer: [sympy object, source string], or [] (cached: a
    gold answer is compared with many samples)."""
    import math_verify

    # Units are dropped by clean_latex, by rules that keep value words; math-verify's own unit rule
    # also strips letters such as t, s, m, h after a number ("4t" read as 4).
    latex = math_verify.LatexExtractionConfig(normalization_config=math_verify.LatexNormalizationConfig(
        basic_latex=True, units=False, malformed_operators=True, nits=True, boxed="all", equations=False))
    configs = [latex, math_verify.ExprExtractionConfig()]
    return math_verify.parse(f"${expand_plus_minus(clean_latex(answer))}$", configs, parsing_timeout=None)


def symbolic_equal(answer: str, gold: str) -> bool:
    """math-verify equivalence of two answer strings plus the strict numeric veto. No timeout:
    call it through `VerifierPool` on untrusted input."""
    import math_verify

    gold_parsed, answer_parsed = _parse(gold), _parse(answer)
    if not gold_parsed or not answer_parsed:
        return False
    decimals = frozenset(float(d) for text in (answer, gold) for d in _DECIMAL_RE.findall(clean_latex(text)))
    if not math_verify.verify(gold_parsed, answer_parsed, timeout_seconds=None):
        return _vector_equal(gold_parsed[0], answer_parsed[0], decimals)
    plus_minus = any(sign in text for text in (answer, gold) for sign in (r"\pm", r"\mp"))
    if _interval_against_points(gold_parsed[0], answer_parsed[0], plus_minus):
        return False
    return not _provably_distinct(gold_parsed[0], answer_parsed[0], decimals)


def _vector_equal(a, b, decimals: frozenset = frozenset()) -> bool:
    """A column or row vector written as a tuple, "(1, 2)", against the matrix form (math-verify
    compares them as different kinds): equal when every entry is."""
    import math_verify
    import sympy
    from sympy.matrices import MatrixBase

    vector, entries = (a, b) if isinstance(a, MatrixBase) else (b, a)
    if isinstance(entries, sympy.Interval):  # "(1, 2)" parses as an open interval
        entries = sympy.Tuple(entries.start, entries.end)
    if not (isinstance(vector, MatrixBase) and 1 in vector.shape and isinstance(entries, sympy.Tuple)
            and len(entries) == len(vector)):
        return False
    return all(math_verify.verify(x, y, timeout_seconds=None) and not _provably_distinct(x, y, decimals)
               for x, y in zip(vector, entries))


def _interval_against_points(a, b, plus_minus: bool) -> bool:
    """Whether one of a, b is an interval and the other a list of its endpoints that cannot mean it.
    "(a, b)" may be a point, which "a, b" writes too; but not when one side has a ± ("\\pm\\sqrt{3}"
    against (-sqrt(3), sqrt(3))), or the interval is closed at an end or unbounded ("2, \\infty")."""
    import sympy

    interval, points = (a, b) if isinstance(a, sympy.Interval) else (b, a)
    if not isinstance(interval, sympy.Interval) or not isinstance(points, (sympy.FiniteSet, sympy.Tuple)):
        return False
    return bool(plus_minus or not (interval.left_open and interval.right_open)
                or not (interval.start.is_finite and interval.end.is_finite))


# ---------------------------------------------------------------------------------------------
# Worker pool with hard per-item timeouts.


# Checked once by the template process before it forks workers: the first simplify() and the
# first parses of each LaTeX construct import modules and fill parser caches (~1.5 s), which
# forked workers inherit instead of paying inside their per-pair timeout.
_WARMUP = (
    ("(x+1)^2", "x^2+2x+1"), (r"\frac{\sqrt{3}}{2}", r"\frac12\sqrt3"), (r"\{1,2\}", "(1,2]"),
    (r"\begin{pmatrix}1\\2\end{pmatrix}", r"\begin{pmatrix}1\\2\end{pmatrix}"), ("y=2x+1", r"\pi"),
    (r"(-\infty, 3] \cup (4, \infty)", r"3 \pm \sqrt{5}"), (r"\frac{\pi}{4}", r"2^{-3} \cdot 3!"),
    (r"\text{(A)}", r"\log_2 8 + \sin x"), (r"(3, \frac{\pi}{2})", r"1, 2, 3"),
)


def _serve(conn, memory_limit_bytes: int | None) -> None:
    """Worker loop: (answer, gold) in, (equal, error name or None) out, until the pipe closes."""
    if memory_limit_bytes:
        try:
            import resource

            resource.setrlimit(resource.RLIMIT_AS, (memory_limit_bytes, memory_limit_bytes))
        except (ImportError, ValueError, OSError):
            pass  # platform without RLIMIT_AS: the timeout still applies
    while True:
        try:
            answer, gold = conn.recv()
        except BaseException:  # noqa: BLE001  (pool closed, or a message too large for the limit)
            return
        try:
            reply = (symbolic_equal(answer, gold), None)
        except BaseException as e:  # noqa: BLE001  (MemoryError, RecursionError, sympy internals)
            reply = (False, type(e).__name__)
        conn.send(reply)


def _template_main(control, memory_limit_bytes: int | None) -> None:
    """Warms up once, then forks a worker per request and hands back (pid, pipe end)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the caller's to handle
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # killed workers are reaped by the kernel
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    for answer, gold in _WARMUP:
        symbolic_equal(answer, gold)
    while True:
        try:
            control.recv()
        except EOFError:  # the pool closed
            return
        ours, theirs = multiprocessing.Pipe()
        pid = os.fork()
        if pid == 0:
            try:
                control.close()
                ours.close()
                _serve(theirs, memory_limit_bytes)
            finally:
                os._exit(0)
        theirs.close()
        control.send(pid)
        multiprocessing.reduction.send_handle(control, ours.fileno(), None)
        ours.close()


@dataclasses.dataclass(eq=False)
class _Worker:
    pid: int
    conn: multiprocessing.connection.Connection
    job: int | None = None  # index of the pair being checked
    deadline: float = 0.0


class VerifierPool:
    """Worker processes running `symbolic_equal`, each pair under a hard wall-clock timeout.

    One template process imports sympy/math-verify and warms up once; workers are forked from it,
    so they start warm in milliseconds. A worker that runs past the timeout is killed (SIGKILL)
    and replaced; one that dies is replaced too. Bad input never raises: its pairs count as
    unequal and are counted as timeouts or errors. Unix only (fork, fd passing); not thread-safe.
    """

    def __init__(self, workers: int | None = None, memory_limit_mb: int | None = 4096,
                 start_method: str | None = None):
        if workers is not None and workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.num_workers = workers or min(4, os.cpu_count() or 1)
        self._memory_limit = memory_limit_mb * 2**20 if memory_limit_mb else None
        methods = multiprocessing.get_all_start_methods()
        method = start_method or ("forkserver" if "forkserver" in methods else "spawn")
        self._ctx = multiprocessing.get_context(method)
        if method == "forkserver":
            # The fork server imports these once, so the template starts fast, and "__main__" keeps
            # it from re-running the caller's script (which needs an `if __name__ == "__main__":`
            # guard, as with any spawn/forkserver start).
            self._ctx.set_forkserver_preload(["__main__", "math_verify", "sympy"])
        self._template: multiprocessing.Process | None = None
        self._template_served = False  # it has forked a worker
        self._control: multiprocessing.connection.Connection | None = None
        self._workers: list[_Worker] = []

    def _fork_worker(self, restarted: bool = False) -> _Worker:
        if self._template is None:
            self._control, child = self._ctx.Pipe()
            self._template = self._ctx.Process(target=_template_main, args=(child, self._memory_limit), daemon=True)
            self._template.start()
            child.close()
        try:
            self._control.send("fork")
            pid = self._control.recv()  # the first request waits for the template's warm-up
            fd = multiprocessing.reduction.recv_handle(self._control)
        except (EOFError, OSError) as e:
            self._template.join(timeout=1)
            if self._template_served and not restarted:  # it worked before, then died (killed): start another
                self._control.close()
                self._template = None
                return self._fork_worker(restarted=True)
            raise RuntimeError(
                f"the verifier template process exited (exit code {self._template.exitcode}); "
                "a script that starts it needs an `if __name__ == '__main__':` guard") from e
        self._template_served = True
        return _Worker(pid, multiprocessing.connection.Connection(fd))

    def _replace(self, worker: _Worker) -> _Worker:
        try:
            os.kill(worker.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        worker.conn.close()
        new = self._workers[self._workers.index(worker)] = self._fork_worker()
        return new

    def _retry_once(self, worker: _Worker, todo: list[int], resent: set[int], errors: int,
                    done: int) -> tuple[int, int]:
        """Replaces a worker that died on a pair; the pair goes once more to a new worker (last in line),
        then counts as an error."""
        if worker.job in resent:
            errors, done = errors + 1, done + 1
        else:
            resent.add(worker.job)
            todo.insert(0, worker.job)
        worker.job = None
        self._replace(worker)
        return errors, done

    def run(self, pairs: Sequence[tuple[str, str]], timeout: float) -> tuple[np.ndarray, int, int]:
        """`symbolic_equal(answer, gold)` for each (answer, gold) pair.

        Returns (equal [len(pairs)] bool, number of timeouts, number of errors).
        """
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        while len(self._workers) < self.num_workers:
            self._workers.append(self._fork_worker())
        equal = np.zeros(len(pairs), dtype=bool)
        todo = list(range(len(pairs)))[::-1]
        resent: set[int] = set()
        timeouts = errors = done = 0
        while done < len(pairs):
            for w in list(self._workers):
                if w.job is None and todo:
                    if w.conn.poll():  # an idle worker never writes: this is the end of a dead one's pipe
                        w = self._replace(w)
                    w.job, w.deadline = todo.pop(), time.monotonic() + timeout
                    try:
                        w.conn.send(pairs[w.job])
                    except OSError:  # the worker died, e.g. unable to receive this pair
                        errors, done = self._retry_once(w, todo, resent, errors, done)
            busy = [w for w in self._workers if w.job is not None]
            if not busy:
                continue
            wait_s = max(min(w.deadline for w in busy) - time.monotonic(), 0)
            readable = multiprocessing.connection.wait([w.conn for w in busy], wait_s)
            for w in busy:
                if w.conn in readable:
                    try:
                        (equal[w.job], error), w.job = w.conn.recv(), None
                        errors, done = errors + (error is not None), done + 1
                    except (EOFError, OSError):  # died: before this pair came, or on it (killed by the OS)
                        errors, done = self._retry_once(w, todo, resent, errors, done)
                elif time.monotonic() >= w.deadline:
                    timeouts, done = timeouts + 1, done + 1
                    self._replace(w)
        return equal, timeouts, errors

    def close(self) -> None:
        for w in self._workers:
            try:
                os.kill(w.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            w.conn.close()
        self._workers = []
        if self._template is not None:
            self._control.close()  # the template exits on EOF
            self._template.join(timeout=5)
            self._template.kill()
            self._template, self._control = None, None

    def __enter__(self) -> VerifierPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_DEFAULT_POOLS: dict[int | None, VerifierPool] = {}


def _close_default_pools() -> None:
    for pool in _DEFAULT_POOLS.values():
        pool.close()


def default_pool(workers: int | None = None) -> VerifierPool:
    """A process-wide pool per worker count, created on first use and closed at exit."""
    if workers not in _DEFAULT_POOLS:
        if not _DEFAULT_POOLS:
            atexit.register(_close_default_pools)
        _DEFAULT_POOLS[workers] = VerifierPool(workers)
    return _DEFAULT_POOLS[workers]


# ---------------------------------------------------------------------------------------------
# Public reward API.


@dataclasses.dataclass(frozen=True)
class VerifyStats:
    num_items: int
    num_no_answer: int  # completions without an extractable final answer (reward 0)
    num_too_long: int  # answers over max(1000, 2 len(gold)) characters (reward 0, never parsed)
    num_fast: int  # other answers decided by string / exact rational comparison, without sympy
    num_symbolic: int  # distinct (answer, gold) pairs sent to the worker pool
    num_timeouts: int
    num_errors: int
    seconds: float


def grade_batch(completions: Sequence[str], golds: Sequence[str], *, timeout: float = 5.0,
                workers: int | None = None, pool: VerifierPool | None = None
                ) -> tuple[np.ndarray, list[str | None], VerifyStats]:
    """Task rewards r_i = 1[answer(completion_i) == gold_i] as float32 [N], the extracted answers
    (None where there is none), and counters.

    Never raises on model output and never blocks longer than about
    ceil(#symbolic pairs / workers) * timeout. `pool` defaults to `default_pool(workers)`.
    """
    if len(completions) != len(golds):
        raise ValueError(f"completions ({len(completions)}) and golds ({len(golds)}) differ in length")
    start = time.perf_counter()
    answers = [extract_answer(c) for c in completions]
    fast = [fast_verdict(a, g) for a, g in zip(answers, golds)]
    undecided = sorted({(a, g) for a, g, v in zip(answers, golds, fast) if v is None})
    timeouts = errors = 0
    symbolic = {}
    if undecided:
        pool = pool or default_pool(workers)
        equal, timeouts, errors = pool.run(undecided, timeout)
        symbolic = dict(zip(undecided, equal))
    verdicts = [symbolic[(a, g)] if v is None else v for a, g, v in zip(answers, golds, fast)]
    no_answer = sum(a is None for a in answers)
    over_long = sum(a is not None and too_long(a, g) for a, g in zip(answers, golds))
    stats = VerifyStats(
        num_items=len(completions),
        num_no_answer=no_answer,
        num_too_long=over_long,
        num_fast=sum(v is not None for v in fast) - no_answer - over_long,  # fast_verdict says False for those
        num_symbolic=len(undecided),
        num_timeouts=timeouts,
        num_errors=errors,
        seconds=time.perf_counter() - start,
    )
    return np.asarray(verdicts, dtype=np.float32), answers, stats


def verify_batch(completions: Sequence[str], golds: Sequence[str], *, timeout: float = 5.0,
                 workers: int | None = None, pool: VerifierPool | None = None
                 ) -> tuple[np.ndarray, VerifyStats]:
    """(rewards [N] float32, counters) of `grade_batch`, without the answers."""
    rewards, _, stats = grade_batch(completions, golds, timeout=timeout, workers=workers, pool=pool)
    return rewards, stats


def verify(completion: str, gold: str, *, timeout: float = 5.0) -> float:
    """Task reward of one completion: 1.0 if its final answer equals `gold`, else 0.0."""
    rewards, _ = verify_batch([completion], [gold], timeout=timeout)
    return float(rewards[0])
