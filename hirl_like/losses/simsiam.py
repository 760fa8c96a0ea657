"""SimSiam's symmetric negative-cosine loss with stop-gradient (Chen & He 2021).

``D(p, z) = -mean_b (p_b . z_b) / (||p_b|| ||z_b||)`` and
``loss = D(p1, sg(z2)) / 2 + D(p2, sg(z1)) / 2``, where p = predictor(projector(view)) and
z = projector(view); ``sg`` (stop-gradient) is ``detach``, so no gradient reaches z through the loss
(facebookresearch/simsiam: ``simsiam/builder.py`` returns ``z1.detach(), z2.detach()``; ``main_simsiam.py``
uses ``-(CosineSimilarity(p1, z2).mean() + CosineSimilarity(p2, z1).mean()) * 0.5``).
The minimum is -1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hirl_like.registry import LOSSES


def negative_cosine(p: Tensor, z: Tensor) -> Tensor:
    """``D(p, sg(z))``: p, z (B, D) -> scalar ``-mean_b cos(p_b, z_b)``; z is detached."""
    return -F.cosine_similarity(p, z.detach(), dim=-1).mean()


@LOSSES.register()
class SimSiamLoss(nn.Module):
    """``forward(p1, p2, z1, z2)``, all (B, D) -> ``{"loss", "z_std"}``.

    ``loss = D(p1, sg(z2))/2 + D(p2, sg(z1))/2`` (float32, autocast disabled); ``z_std`` is the
    collapse monitor of the SimSiam paper (Fig. 2): the per-channel standard deviation over the batch
    of ``z1 / ||z1||``, averaged over channels (about 1/sqrt(D) without collapse, 0 when collapsed),
    detached.
    """

    def forward(self, p1: Tensor, p2: Tensor, z1: Tensor, z2: Tensor) -> dict[str, Tensor]:
        shapes = {tuple(t.shape) for t in (p1, p2, z1, z2)}
        if len(shapes) != 1 or p1.dim() != 2:
            raise ValueError(f"p1, p2, z1, z2 must all be (B, D), got {[tuple(t.shape) for t in (p1, p2, z1, z2)]}.")
        with torch.autocast(device_type=p1.device.type, enabled=False):
            loss = negative_cosine(p1.float(), z2.float()) / 2 + negative_cosine(p2.float(), z1.float()) / 2
        with torch.no_grad():
            z_std = F.normalize(z1.float(), dim=-1).std(dim=0).mean() if z1.shape[0] > 1 else z1.new_zeros(())
        return {"loss": loss, "z_std": z_std}
