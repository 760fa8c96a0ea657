"""Relational knowledge distillation, RKD-DA (Park, Kim, Lu & Cho, CVPR 2019).

For a batch of n student embeddings s and teacher embeddings t (n, D) (L2-normalised first, as
ITRA does), with the Huber loss ``l(x, y) = (x - y)^2 / 2`` if ``|x - y| <= 1`` else ``|x - y| - 1/2``:

- distance-wise (paper eq. 4-5): ``psi_D(x_i, x_j) = ||x_i - x_j|| / mu``, ``mu`` the mean distance
  over the pairs ``chi^2 = {(i, j): i != j}``;  ``L_D = mean_{(i,j) in chi^2} l(psi_D(t_i, t_j), psi_D(s_i, s_j))``.
- angle-wise (eq. 6-7): ``psi_A(x_i, x_j, x_k) = <e_ij, e_kj>``, ``e_ij = (x_i - x_j) / ||x_i - x_j||``
  (the cosine of the angle at x_j); ``L_A = mean_{(i,j,k) in chi^3} l(psi_A(t), psi_A(s))`` over the
  triplets of three different samples.
- ``L = w_D L_D + w_A L_A``; the paper's weights for distillation on classification, 25 and 50.

The paper writes sums over chi^2 and chi^3; its weights go with the means its code takes (the
reference code averages over every entry of the n x n and n x n x n tensors, degenerate ones
included; here only over the pairs and triplets of chi^2, chi^3; docs/deviations.md). The
teacher's relations carry gradient unless the caller detaches it. Batches: n >= 2 (L_A = 0
below 3 samples). Relations are within this rank's batch (as ITRA).

Returns ``{"loss", "distance", "angle"}``: the unweighted L_D and L_A, detached.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hirl_like.losses.distillers._common import check_non_negative, check_pair, check_positive, float32
from hirl_like.registry import LOSSES


def _distances(x: Tensor) -> Tensor:
    """(n, D) -> (n, n) Euclidean distances; the clamp keeps the gradient finite on the diagonal."""
    sq = (x.unsqueeze(0) - x.unsqueeze(1)).square().sum(dim=-1)
    return sq.clamp(min=1e-12).sqrt()


def _angles(x: Tensor) -> Tensor:
    """(n, D) -> (n, n, n): entry [j, i, k] = <e_ij, e_kj>, the cosine at vertex x_j."""
    e = F.normalize(x.unsqueeze(0) - x.unsqueeze(1), dim=-1)  # e[j, i] = unit(x_i - x_j)
    return e @ e.transpose(1, 2)


@LOSSES.register()
class RKDLoss(nn.Module):
    """Args:
    distance_weight: w_D (25, the paper's; ITRA 0.5).
    angle_weight: w_A (50, the paper's; ITRA 1.0).
    huber_delta: where the Huber loss turns linear (1, the paper's ``smooth_l1``).
    """

    def __init__(self, distance_weight: float = 25.0, angle_weight: float = 50.0, huber_delta: float = 1.0) -> None:
        super().__init__()
        check_non_negative("RKDLoss", "distance_weight", distance_weight)
        check_non_negative("RKDLoss", "angle_weight", angle_weight)
        check_positive("RKDLoss", "huber_delta", huber_delta)
        self.distance_weight, self.angle_weight, self.huber_delta = float(distance_weight), float(angle_weight), float(huber_delta)

    def _huber(self, a: Tensor, b: Tensor) -> Tensor:
        return F.smooth_l1_loss(a, b, reduction="none", beta=self.huber_delta)

    def forward(self, student: Tensor, teacher: Tensor) -> dict[str, Tensor]:
        """student, teacher: (n, D) embeddings of the same n pairs."""
        check_pair(student, teacher, "RKDLoss", min_batch=2)
        with float32(student):
            s, t = F.normalize(student.float(), dim=1), F.normalize(teacher.float(), dim=1)
            n = s.shape[0]
            eye = torch.eye(n, dtype=torch.bool, device=s.device)
            pairs = ~eye
            d_s, d_t = _distances(s), _distances(t)
            psi_s, psi_t = d_s / d_s[pairs].mean(), d_t / d_t[pairs].mean()
            distance = self._huber(psi_s, psi_t)[pairs].mean()
            if n >= 3:
                # [j, i, k] with i != j, k != j, i != k
                triplets = pairs.unsqueeze(2) & pairs.unsqueeze(1) & pairs.unsqueeze(0)
                angle = self._huber(_angles(s), _angles(t))[triplets].mean()
            else:
                angle = s.new_zeros(())
            loss = self.distance_weight * distance + self.angle_weight * angle
        return {"loss": loss, "distance": distance.detach(), "angle": angle.detach()}
