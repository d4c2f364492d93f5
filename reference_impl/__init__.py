"""Reference implementation: compute gradient blueprints from a torch model and calibration data.

Public API:

* `compute_blueprint(model, domains, loss_fn=None, config=None) -> Blueprint` with its settings
  in `ComputeConfig` (compute.py);
* `CalibrationDomain`, `data_fingerprint`;
* `fit_power_law`, `mass_shares`, `convert_exponent` (heavy_tail.py);
* `bootstrap_stability`, `StabilityConfig` (stability.py): how stable a domain's ranking is;
* `AllocationRule`, `CostModel`, `allocate`, the rule registry `RULE_TYPES` (allocation.py);
* `apply_blueprint`, `ApplyConfig`, `BlueprintHandle`, `load_update`, ... (apply.py): fine-tune
  only what a blueprint selects; partial updates trained in place by the sparse engine
  (`attach_sparse`, `SparseEngine`, `SparseSelection` in sparse_update.py);
* `FinetuneConfig`, `train`, `run_finetune` (finetune.py): the fine-tuning loop and command;
* `Meter`, `StoppingRule`, `FlopCounter` (meter.py): capability per resource;
* `lora_config`, `shira_config` (peft_export.py);
* `per_example_grad_norms` (ghost_norms.py) and `score_batches`, `select_indices`,
  `selection_summary`, ... (data_selection.py): data selection by per-example gradient norms;
* `MeterCallback`, `blueprint_trainer` (trainer_callback.py; imported on first use, since they
  need transformers' Trainer).

Importing this package imports torch; the `blueprint` CLI reaches it only through its command
modules (`reference_impl.compute_cli`, `select_cli`, `finetune_cli`), lazily.
"""

from typing import Any

from reference_impl.allocation import RULE_TYPES, Allocation, AllocationRule, CostModel, allocate
from reference_impl.apply import (
    ApplyConfig,
    ApplyError,
    BlueprintHandle,
    ModuleSelection,
    apply_blueprint,
    load_update,
    published_scores,
    sidecar_scores,
)
from reference_impl.compute import CalibrationDomain, ComputeConfig, compute_blueprint
from reference_impl.data_selection import (
    METHOD,
    ScoreResult,
    blueprint_selected_modules,
    data_fingerprint,
    modules_digest,
    read_scores,
    score_batches,
    select_indices,
    selected_count,
    selection_summary,
    write_scores,
)
from reference_impl.errors import ComputeError, ComputeInputError
from reference_impl.finetune import FinetuneConfig, run_finetune, train
from reference_impl.ghost_norms import (
    GhostNormResult,
    causal_lm_per_example_loss,
    default_per_example_loss,
    per_example_grad_norms,
    per_example_grad_norms_loop,
    sequence_classification_per_example_loss,
)
from reference_impl.heavy_tail import PowerLawFit, convert_exponent, fit_power_law, mass_shares
from reference_impl.meter import FlopCounter, Meter, MeterPoint, StoppingRule
from reference_impl.peft_export import LoraExport, lora_config, shira_config
from reference_impl.sparse_update import SparseEngine, SparseSelection, attach_sparse
from reference_impl.stability import Stability, StabilityConfig, bootstrap_stability

_LAZY = {
    "MeterCallback": "reference_impl.trainer_callback",
    "blueprint_trainer": "reference_impl.trainer_callback",
}


def __getattr__(name: str) -> Any:
    # Trainer integration imports transformers' Trainer (and accelerate): load it on first use only.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'reference_impl' has no attribute {name!r}")


__all__ = [
    "METHOD",
    "RULE_TYPES",
    "Allocation",
    "AllocationRule",
    "ApplyConfig",
    "ApplyError",
    "BlueprintHandle",
    "CalibrationDomain",
    "ComputeConfig",
    "ComputeError",
    "ComputeInputError",
    "CostModel",
    "FinetuneConfig",
    "FlopCounter",
    "GhostNormResult",
    "LoraExport",
    "Meter",
    "MeterCallback",
    "MeterPoint",
    "ModuleSelection",
    "PowerLawFit",
    "ScoreResult",
    "SparseEngine",
    "SparseSelection",
    "Stability",
    "StabilityConfig",
    "StoppingRule",
    "allocate",
    "apply_blueprint",
    "attach_sparse",
    "blueprint_selected_modules",
    "blueprint_trainer",
    "bootstrap_stability",
    "causal_lm_per_example_loss",
    "compute_blueprint",
    "convert_exponent",
    "data_fingerprint",
    "default_per_example_loss",
    "fit_power_law",
    "load_update",
    "lora_config",
    "mass_shares",
    "modules_digest",
    "per_example_grad_norms",
    "per_example_grad_norms_loop",
    "published_scores",
    "read_scores",
    "run_finetune",
    "score_batches",
    "select_indices",
    "selected_count",
    "selection_summary",
    "sequence_classification_per_example_loss",
    "shira_config",
    "sidecar_scores",
    "train",
    "write_scores",
]
