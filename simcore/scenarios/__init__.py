"""Drive: a registry of scenarios, each a SimPy process that submits programs to the engine.

A new scenario is one file with a `@register("kind")` dataclass and one import line below.
"""

from simcore.scenarios import (  # noqa: F401  (registers them)
    decode,
    generate,
    model_switch,
    moe_offload,
    offload_decode,
    pim_generate,
    prefill,
    serve,
    vision,
)
from simcore.scenarios.base import SCENARIOS, LLMRun, Scenario
from simcore.scenarios.decode import Decode
from simcore.scenarios.generate import Generate
from simcore.scenarios.prefill import Prefill
from simcore.scenarios.serve import Serve
from simcore.scenarios.vision import Inference

__all__ = ["SCENARIOS", "Decode", "Generate", "Inference", "LLMRun", "Prefill", "Scenario", "Serve"]
