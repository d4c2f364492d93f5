"""Reference implementation: compute gradient blueprints from a torch model and calibration data.

Public API:

* `compute_blueprint(model, domains, loss_fn=None, ...) -> Blueprint` (compute.py);
* `CalibrationDomain`, `data_fingerprint`;
* `fit_power_law`, `mass_shares`, `convert_exponent` (heavy_tail.py);
* `Rule`, `CostModel`, `allocate` (allocation.py).

Importing this package imports torch; the `blueprint` CLI reaches it only through
`reference_impl.cli`, lazily.
"""

from reference_impl.allocation import Allocation, CostModel, Rule, allocate
from reference_impl.compute import CalibrationDomain, compute_blueprint, data_fingerprint
from reference_impl.errors import ComputeError, ComputeInputError
from reference_impl.heavy_tail import PowerLawFit, convert_exponent, fit_power_law, mass_shares

__all__ = [
    "Allocation",
    "CalibrationDomain",
    "ComputeError",
    "ComputeInputError",
    "CostModel",
    "PowerLawFit",
    "Rule",
    "allocate",
    "compute_blueprint",
    "convert_exponent",
    "data_fingerprint",
    "fit_power_law",
    "mass_shares",
]
