"""How a job's math libraries use their threads; set before torch loads its OpenMP.

- The thread count is the stage's: MKL and OpenMP may not drop threads when the machine is
  busy (a different split of every reduction, so different bits).
- Idle OpenMP threads spin for `SPIN_COUNT` iterations (tens of microseconds) before they
  sleep. torch's Linux wheels use GNU OpenMP, whose default spins 300,000 iterations: a
  2-thread job beside other work then waits out a scheduler slice at every op's barrier
  (the toy model's step took 2.7-14.6 s against 0.42-0.65 s sleeping at once, beside other
  jobs on 2 cores). Sleeping at once (`OMP_WAIT_POLICY=PASSIVE`) costs ~1.6x per step on
  quiet cores instead. A short spin covers the gaps between one op and the next. The toy
  model's step on 2 threads (Zen 4; `SPIN_COUNT` / sleeping at once / the default spin):
  on quiet cores 66 / 105 / 69 ms; beside one busy core 138 / 125 / 210 ms; beside two
  158 / 114 ms. The arithmetic is the same either way, so are the weights.

A user's own `OMP_WAIT_POLICY` or `GOMP_SPINCOUNT` wins.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

SPIN_COUNT = 1000
"""GNU OpenMP's busy-wait iterations before an idle thread sleeps (its default: 300,000)."""
JOB_ENVIRONMENT = {
    "MKL_DYNAMIC": "FALSE",
    "OMP_DYNAMIC": "FALSE",
    "GOMP_SPINCOUNT": str(SPIN_COUNT),
}
"""What a job sets unless the user has."""


def set_job_environment(env: MutableMapping[str, str] = os.environ) -> None:
    """`JOB_ENVIRONMENT` into `env`, keeping what is set there (a wait policy included)."""
    for name, value in JOB_ENVIRONMENT.items():
        if name == "GOMP_SPINCOUNT" and "OMP_WAIT_POLICY" in env:
            continue
        env.setdefault(name, value)
