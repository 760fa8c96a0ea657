import pytest

import hirl_like.losses.clip  # noqa: F401  (each import registers its loss)
import hirl_like.losses.dino  # noqa: F401
import hirl_like.losses.ibot  # noqa: F401
import hirl_like.losses.mae  # noqa: F401
import hirl_like.losses.mlm  # noqa: F401
import hirl_like.losses.siglip  # noqa: F401
import hirl_like.losses.simclr  # noqa: F401
import hirl_like.losses.text_distill  # noqa: F401
from hirl_like.registry import LOSSES

NAMES = ["ClipLoss", "SigLipLoss", "IBOTLoss", "DINOLoss", "MAELoss", "MLMLoss", "TextDistillLoss", "SimCLRLoss"]


@pytest.mark.parametrize("name", NAMES)
def test_builds_with_defaults(name):
    loss = LOSSES.build({"name": name})
    assert type(loss).__name__ == name


@pytest.mark.parametrize(
    "cfg,match",
    [
        ({"name": "IBOTLoss", "student_temp": 0.0}, "student_temp"),
        ({"name": "IBOTLoss", "center_momentum": 1.5}, "center_momentum"),
        ({"name": "DINOLoss", "local_crops": -1}, "local_crops"),
        ({"name": "TextDistillLoss", "out_dim": 0}, "out_dim"),
        ({"name": "MAELoss", "patch_size": 0}, "patch_size"),
        ({"name": "SimCLRLoss", "temperature": -0.1}, "temperature"),
        ({"name": "SigLipLoss", "soft_temperature": 0.0}, "soft_temperature"),
    ],
)
def test_bad_arguments_name_the_argument(cfg, match):
    with pytest.raises(ValueError, match=match):
        LOSSES.build(cfg)
