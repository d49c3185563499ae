"""The ``rs-sdf`` method, registered with nerfstudio through the ``nerfstudio.method_configs`` entry point.

Every ``ns-*`` command imports this module, for every method, so it must be cheap and must never raise: if building
the method fails (a broken install, say), ``rs_sdf`` is left as a one-line explanation instead, which nerfstudio
reports as a warning while all its own methods keep working.
"""

from __future__ import annotations

from typing import Any

DESCRIPTION = "Randomized smoothing of a voxel occupancy grid as a weak SDF (certified distance), volume-rendered."


def _build() -> Any:
    from nerfstudio.plugins.types import MethodSpecification

    from rs_nerfstudio.config import rs_sdf_trainer_config

    return MethodSpecification(config=rs_sdf_trainer_config(), description=DESCRIPTION)


try:
    rs_sdf = _build()
except Exception as error:  # noqa: BLE001 - an entry point must never break nerfstudio's other methods
    rs_sdf = f"rs-sdf is unavailable: {type(error).__name__}: {error}"
