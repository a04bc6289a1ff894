"""Statement boundaries: the points inside an adapter call where a crash leaves a half-done effect.

Adapters call :func:`boundary` between two statements (or file operations) of one effect. Nothing
happens unless a drill is watching (:func:`watching`): the saga engine installs one for a step run
with the fault mode ``crash_between_statements``, which kills the task process at the k-th boundary,
so the tests can prove that every half-done effect is either rolled back or recognised by its
compensation. It imports nothing of ours.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_watcher: ContextVar[Callable[[str], None] | None] = ContextVar("statement_boundary_watcher", default=None)


def boundary(label: str) -> None:
    """Mark a point between two statements of one effect (``label`` says which)."""
    watcher = _watcher.get()
    if watcher is not None:
        watcher(label)


@contextmanager
def watching(watcher: Callable[[str], None] | None) -> Iterator[None]:
    token = _watcher.set(watcher)
    try:
        yield
    finally:
        _watcher.reset(token)
