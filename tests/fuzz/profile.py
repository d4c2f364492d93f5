"""Fuzz-suite settings: a few thousand examples in `make test`, many more on request.

`BLUEPRINT_FUZZ_SCALE=50 pytest tests/fuzz` multiplies every test's example count by 50 (the long
run SECURITY.md describes); the default keeps the whole suite under about a minute.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

SCALE = max(1, int(os.environ.get("BLUEPRINT_FUZZ_SCALE", "1")))


def fuzz_settings(examples: int) -> settings:
    """Settings for one fuzz test: `examples` times the scale, no deadline (timing is asserted
    per example where it matters), health checks that only concern speed turned off."""
    return settings(
        max_examples=examples * SCALE,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
        derandomize=SCALE == 1,  # the default run is reproducible; long runs explore
    )
