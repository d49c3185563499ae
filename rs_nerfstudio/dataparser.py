"""nerfstudio's Blender dataparser with each split's files checked first, and float32 intrinsics.

``ns-eval``, ``ns-viewer`` and ``ns-render`` parse the test split, which training never reads. nerfstudio's parser
meets a missing ``transforms_test.json``, a moved data folder or a missing image with a traceback; this one stops
with one line naming the file. nerfstudio's parser also makes the focal lengths float64 (numpy's ``tan``), on which
``ns-render spiral`` fails ("expected scalar type Float but found Double").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Type

from nerfstudio.data.dataparsers.blender_dataparser import Blender, BlenderDataParserConfig

from rs_nerfstudio.validation import check_blender_folder


class CheckedBlender(Blender):
    """:class:`Blender`, which first checks the split's transforms file, images and poses."""

    def _generate_dataparser_outputs(self, split: str = "train"):
        check_blender_folder(self.data, splits=(split,))
        outputs = super()._generate_dataparser_outputs(split)
        cameras = outputs.cameras
        for name in ("fx", "fy", "cx", "cy"):
            setattr(cameras, name, getattr(cameras, name).float())
        return outputs


@dataclass
class CheckedBlenderDataParserConfig(BlenderDataParserConfig):
    """nerfstudio's Blender dataparser config, for :class:`CheckedBlender`."""

    _target: Type = field(default_factory=lambda: CheckedBlender)
    """The dataparser class this config builds."""
