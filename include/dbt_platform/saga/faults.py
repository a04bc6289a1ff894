"""Fault injection for drills and tests: make a step fail, hang or die exactly where asked.

A run's conf may carry ``fault_injection``: ``{"step": s, "mode": m, "times": n, "after": k}``. It is
honoured only when ``SAGA_FAULT_INJECTION=1`` is set in Airflow's environment (the saga definition's
``fault_injection_enabled``). ``times`` is how many attempts it hits (default 1). ``after`` (for steps
with several effects) places the fault after the k-th effect instead of before the first.
``fail_compensation_of`` names a step whose compensation then fails for good in this run's
``compensate`` task (not when the saga is re-driven later), to drill the FAILED path.

| mode | what happens |
|---|---|
| ``permanent`` | a PermanentError before the effect (no retry, compensation at once) |
| ``transient`` | a TransientError before the effect (retried with backoff) |
| ``timeout`` | the step sleeps past its ``execution_timeout`` |
| ``crash_after_effect`` | the task process is SIGKILLed after the effect, before its result is recorded |
| ``crash_between_statements`` | the task process is SIGKILLed at the k-th statement boundary (``after``, default 1) inside the effect (see :mod:`include.dbt_platform.boundaries`) |

``{"step": "complete_saga", "mode": "permanent" | "transient"}`` fails the saga's completion (done by
the last step's task once the step succeeded): after the pivot the saga must then go forward, never
be compensated.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING

from include.dbt_platform.errors import PermanentError, TransientError

if TYPE_CHECKING:
    from include.dbt_platform.saga.definition import Step

FAULT_MODES = ("permanent", "transient", "timeout", "crash_after_effect", "crash_between_statements")
COMPLETION = "complete_saga"


class FaultInjector:
    def __init__(self, spec: dict | None, enabled: bool) -> None:
        self.spec = spec if (enabled and spec) else None
        if self.spec and self.spec.get("mode") not in FAULT_MODES:
            raise PermanentError(f"fault_injection.mode must be one of {FAULT_MODES}")

    def before_compensation(self, step: Step) -> None:
        if self.spec and self.spec.get("fail_compensation_of") == step.name:
            raise PermanentError(f"injected failure of the compensation of {step.name}")

    def _active(self, step: str, attempt: int) -> str | None:
        if not self.spec or self.spec.get("step") != step:
            return None
        return self.spec["mode"] if attempt <= int(self.spec.get("times", 1)) else None

    def _fire(self, mode: str, step: str, timeout: timedelta) -> None:
        if mode == "permanent":
            raise PermanentError(f"injected permanent fault in {step}")
        if mode == "transient":
            raise TransientError(f"injected transient fault in {step}")
        if mode == "timeout":
            time.sleep(timeout.total_seconds() + 60)

    def before_effect(self, step: Step, attempt: int) -> None:
        mode = self._active(step.name, attempt)
        if mode and not mode.startswith("crash_") and "after" not in self.spec:
            self._fire(mode, step.name, step.timeout)

    def checkpoint(self, step: Step, attempt: int, effects_done: int) -> None:
        mode = self._active(step.name, attempt)
        if mode and mode != "crash_between_statements" and self.spec.get("after") == effects_done:
            if mode == "crash_after_effect":
                os.kill(os.getpid(), signal.SIGKILL)
            self._fire(mode, step.name, step.timeout)

    def boundary_watcher(self, step: Step, attempt: int) -> Callable[[str], None] | None:
        """For ``crash_between_statements``: dies at the k-th statement boundary of the step's effect."""
        if self._active(step.name, attempt) != "crash_between_statements":
            return None
        wanted = int(self.spec.get("after", 1))
        seen = []

        def watch(label: str) -> None:
            seen.append(label)
            if len(seen) == wanted:
                os.kill(os.getpid(), signal.SIGKILL)

        return watch

    def before_completion(self, attempt: int) -> None:
        mode = self._active(COMPLETION, attempt)
        if mode in ("permanent", "transient"):
            self._fire(mode, COMPLETION, timedelta(0))

    def after_effect(self, step: Step, attempt: int) -> None:
        if self._active(step.name, attempt) == "crash_after_effect" and "after" not in self.spec:
            # The task process dies after the side effect, before the result is recorded.
            os.kill(os.getpid(), signal.SIGKILL)
