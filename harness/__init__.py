"""harness: a plugin-based benchmark harness for the adversarial robustness of causal language models.

The public API for plugin authors is what this module exports; everything else is the core's business.
"""

from .api import AttackPlugin, LoadedModel, MetricPlugin, ModelPlugin, Plugin, TrainerPlugin
from .config import ExistingPath, PluginConfig, ResolvedPath
from .context import StageContext, StagePreempted, derive_seed
from .data import Document, DocumentSource, load_documents
from .env import restored_environ
from .errors import ConfigError, HarnessError, NonFiniteLoss
from .hookspecs import hookimpl
from .workload import (Batch, DocumentStats, ModelShape, NoEstimate, PlanInputs, TrainingSetup, WeightsSource,
                       Workload)

__version__ = "0.1.0"
__all__ = [
    "AttackPlugin", "ConfigError", "Document", "DocumentSource", "ExistingPath", "HarnessError", "LoadedModel",
    "MetricPlugin", "ModelPlugin", "NonFiniteLoss", "Plugin", "PluginConfig", "ResolvedPath", "StageContext",
    "StagePreempted", "TrainerPlugin", "derive_seed", "hookimpl", "load_documents", "restored_environ",
    # the optional `plan` method's types (harness plan)
    "Batch", "DocumentStats", "ModelShape", "NoEstimate", "PlanInputs", "TrainingSetup", "WeightsSource", "Workload",
]
