"""Design-space exploration: sweep files, sampling, a crash-safe results store, parallel runners
(local processes, Dask, Ray), Pareto fronts and sensitivity.

    import simcore
    df = simcore.sweep("configs/sweeps/dse_hbm_sms_batch.yaml", workers=2)
    df[df.pareto]

`simcore.sweep` is both this module and a function: calling the module runs `sweep(...)`.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from simcore.sweep import command as _command  # noqa: F401  (registers `simcore sweep`)
from simcore.sweep.analysis import pareto_front, pareto_mask, sensitivity_summary, top_table
from simcore.sweep.core import SweepInterrupted, run_sweep, sensitivity, sweep
from simcore.sweep.spec import Axis, SweepSpec, load_sweep
from simcore.sweep.store import Store, StoreError, StoreWarning, point_key

__all__ = ["Axis", "Store", "StoreError", "StoreWarning", "SweepInterrupted", "SweepSpec", "load_sweep",
           "pareto_front", "pareto_mask", "point_key", "run_sweep", "sensitivity", "sensitivity_summary", "sweep",
           "top_table"]  # fmt: skip


class _CallableModule(types.ModuleType):
    """Lets `simcore.sweep(...)` work whether `simcore.sweep` resolves to this module or the function."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return sweep(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
