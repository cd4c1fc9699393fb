"""Structured convolutions against what a practitioner would pick instead, at matched cost
(``structconv compare``): one resumable study, run by run.

:mod:`.config` holds the options and the list of runs, :mod:`.methods` the registered methods
(what each builds, trains and deploys), :mod:`.study` the running, resuming and summarizing.
"""

from .config import CompareConfig, Run, plan_runs
from .methods import (
    CompareMethod,
    expand_methods,
    get_method,
    method_names,
    register_method,
    selectable_names,
    unregister_method,
)
from .study import Study, measure_latency, run_study, summarize

__all__ = [
    "CompareConfig",
    "Run",
    "plan_runs",
    "CompareMethod",
    "register_method",
    "unregister_method",
    "get_method",
    "method_names",
    "selectable_names",
    "expand_methods",
    "Study",
    "run_study",
    "summarize",
    "measure_latency",
]
