"""Memory planning: predict a run's peak memory from its configuration, before any weight is loaded.

Pure arithmetic on the model's architecture figures and the run's settings: importing this package loads neither
torch nor transformers, so ``llmft-plan`` answers in about a second. ``plan_memory(setup_from_cfg(cfg))`` gives
the plan; ``suggest`` the changes that make an over-budget run fit.
"""

from llmft.planning.plan import MemoryPlan, plan_memory
from llmft.planning.setup import Setup, setup_from_cfg

__all__ = ["MemoryPlan", "Setup", "plan_memory", "setup_from_cfg"]
