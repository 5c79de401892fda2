"""harness: a plugin-based benchmark harness for the adversarial robustness of causal language models.

The public API for plugin authors is what this module exports, plus these documented modules: ``harness.loop``
(the per-example loop: resume, stop, budget, progress, records), ``harness.attacks`` (the attack toolkit: the shared
task, examples, the batched exact scorer, token gradients, records and summaries), ``harness.triggers`` (universal
strings: placement, held-out evaluation), ``harness.summary`` (how a declared metric follows from the records) and
``harness.scoring`` (the perplexity scorer's windows and batched passes); for code that reads finished runs
(write-ups, notebooks, studies), ``harness.results``. Everything else is the core's business and may change without
notice.
"""

from .api import (DATA_ORDER_FINGERPRINT, AttackPlugin, LoadedModel, MetricPlugin, MetricSpec, ModelPlugin, Plugin,
                  TrainerPlugin)
from .checkpointing import set_gradient_checkpointing
from .config import ExistingPath, PluginConfig, ResolvedPath
from .context import StageContext, StagePreempted, derive_seed
from .data import Document, DocumentSource, load_documents
from .env import native_bf16, restored_environ
from .files import read_regular
from .errors import ConfigError, HarnessError, NonFiniteLoss, did_you_mean
from .hub import cached_locally, hub_reachable, offline_mode
from .hookspecs import hookimpl
from .store import RecordLog, atomic_write_bytes, atomic_write_json, atomic_write_text, read_json
from .workload import (RECORD_BYTES, Batch, DocumentStats, ModelShape, NoEstimate, PlanInputs, TrainingSetup,
                       WeightsSource, Workload, planned_examples, sequence_length)

__version__ = "0.1.0"
__all__ = [
    "AttackPlugin", "ConfigError", "Document", "DocumentSource", "ExistingPath", "HarnessError", "LoadedModel",
    "MetricPlugin", "MetricSpec", "ModelPlugin", "NonFiniteLoss", "Plugin", "PluginConfig", "ResolvedPath", "StageContext",
    "StagePreempted", "TrainerPlugin", "derive_seed", "hookimpl", "load_documents", "restored_environ",
    "did_you_mean", "set_gradient_checkpointing",
    # whether bf16 is native on a device (a setting that asks for it elsewhere is refused, not run emulated)
    "native_bf16",
    # the summary key of a trainer's data-order fingerprint (common random numbers across arms)
    "DATA_ORDER_FINGERPRINT",
    # durable files (atomic writes, the record log) and hub checks, for plugins that keep state or load from a hub
    "RecordLog", "atomic_write_bytes", "atomic_write_json", "atomic_write_text", "read_json", "read_regular",
    "cached_locally", "hub_reachable", "offline_mode",
    # the optional `plan` method's types (harness plan)
    "Batch", "DocumentStats", "ModelShape", "NoEstimate", "PlanInputs", "TrainingSetup", "WeightsSource", "Workload",
    # what attack cost models share: a record's size, the examples a stage attacks, an attacked sequence's length
    "RECORD_BYTES", "planned_examples", "sequence_length",
]
