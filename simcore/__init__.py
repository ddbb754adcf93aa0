"""simcore: a discrete-event simulator of ML hardware.

import simcore
system = simcore.load_system("h100-sxm5-80gb")
result = simcore.simulate(system, "llama-3-8b", simcore.Generate(batch=8, prompt_len=1024, new_tokens=256))
print(result.table())
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "load_system": "simcore.system",
    "System": "simcore.system",
    "simulate": "simcore.experiment",
    "run": "simcore.experiment",
    "load_experiment": "simcore.experiment",
    "Prefill": "simcore.experiment",
    "Decode": "simcore.experiment",
    "Generate": "simcore.experiment",
    "Result": "simcore.results",
    "load_llm": "models.llm",
    "OpGraph": "simcore.ops",
    "Engine": "simcore.engine",
    "Program": "simcore.program",
    "sweep": "simcore.sweep",
}


def __getattr__(name: str) -> Any:  # lazy: `import simcore` stays cheap for the CLI and workers
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'simcore' has no attribute {name!r}")


__all__ = ["__version__", *_EXPORTS]
