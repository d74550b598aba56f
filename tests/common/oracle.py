"""The harness every Python test driver shares: it counts checks, prints the first failures, and
ends the run with one summary line and the exit status Meson reads (0 passed, 1 failed, 77
skipped). A driver imports it from this folder:

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "common"))
    from oracle import check, finish
"""
import sys

MAX_SHOWN = 20  # failures printed in full; the others are only counted

_checks = 0
_failures = 0


def check(cond, what):
    """Counts one check. When `cond` is false it is a failure, described by `what` (a string, or a
    function returning one, called only for a failure that is printed). Returns `cond`."""
    global _checks, _failures
    _checks += 1
    if not cond:
        _failures += 1
        if _failures <= MAX_SHOWN:
            print("FAIL:", what() if callable(what) else what, file=sys.stderr)
    return cond


def finish(name):
    """Prints "NAME: N passed, M failed" and exits: 1 after any failure, 0 otherwise."""
    if _failures > MAX_SHOWN:
        print(f"({_failures - MAX_SHOWN} more failures not shown)", file=sys.stderr)
    print(f"{name}: {_checks - _failures} passed, {_failures} failed")
    sys.exit(1 if _failures else 0)


def skip(name, why):
    """Ends the run as skipped (exit 77), saying why."""
    print(f"{name}: skipped ({why})")
    sys.exit(77)
