"""iBOT objective: CLS self-distillation across views + masked-patch self-distillation."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hirl_like.data.masking import generate_block_masks
from hirl_like.losses.ibot import IBOTLoss
from hirl_like.models.heads import DINOHead
from hirl_like.pipelines.backbones import Backbones, make_teacher
from hirl_like.pipelines.objective import Objective
from hirl_like.pipelines.step_cache import StepCache
from hirl_like.registry import OBJECTIVES
from hirl_like.schedules import Progress, Span, check_span, linear


@OBJECTIVES.register("ibot")
class IBOTObjective(Objective):
    """Student: the global crops with block-wise masks + the local crops (no mask). Teacher (EMA):
    the unmasked global crops, a forward shared with CLIP's soft image targets.

    Args:
        out_dim / patch_out_dim: prototypes K of the CLS / patch heads (Harmony: 8192).
        shared_head: one head for CLS and patch tokens (Harmony, iBOT ViT-S); needs equal dims.
        head_hidden_dim, head_bottleneck_dim, head_nlayers, norm_last_layer: the head MLP
            (d -> 2048 -> 2048 -> 256, L2-norm, weight-normed 256 -> K with the norm fixed at 1).
        pred_ratio, pred_ratio_var: iBOT's per-image mask ratio rule ([0, 0.3] / [0, 0.2]: each
            global crop is unmasked or masked at U(0.1, 0.5)). min_aspect: block aspect bound.
        teacher_temp / warmup_teacher_temp: CLS teacher temperature and its start value.
        teacher_patch_temp / warmup_teacher_patch_temp: patch teacher temperature (0.04 -> 0.07).
        warmup_teacher_temp_epochs: linear warm-up of both temperatures, per iteration; epochs or a
            share of the run ("40%"), as every schedule length here.
        student_temp, center_momentum: 0.1 and 0.9.
        lambda1 / lambda2: CLS / patch weights (Harmony eq. 9: 0.5 / 0.5; iBOT alone: 1 / 1).
        freeze_last_layer: how long (epochs or share of the run) the heads' last layers get no update.
    """

    views = ("global_crops", "local_crops")

    def __init__(
        self,
        backbones: Backbones,
        out_dim: int = 8192,
        patch_out_dim: int = 8192,
        shared_head: bool = True,
        head_hidden_dim: int = 2048,
        head_bottleneck_dim: int = 256,
        head_nlayers: int = 3,
        norm_last_layer: bool = True,
        pred_ratio: float | Sequence[float] = (0.0, 0.3),
        pred_ratio_var: float | Sequence[float] = (0.0, 0.2),
        min_aspect: float = 0.3,
        teacher_temp: float = 0.04,
        warmup_teacher_temp: float = 0.04,
        teacher_patch_temp: float = 0.07,
        warmup_teacher_patch_temp: float = 0.04,
        warmup_teacher_temp_epochs: Span = 3.0,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
        lambda1: float = 0.5,
        lambda2: float = 0.5,
        freeze_last_layer: Span = 1.0,
    ) -> None:
        super().__init__(backbones)
        if shared_head and out_dim != patch_out_dim:
            raise ValueError(f"ibot.shared_head needs out_dim == patch_out_dim, got {out_dim} and {patch_out_dim}.")
        backbones.require_vision_teacher()
        backbones.require_mask_token()
        dim = backbones.student_vision.embed_dim

        def head(k: int) -> DINOHead:
            return DINOHead(dim, k, head_hidden_dim, head_bottleneck_dim, head_nlayers, norm_last_layer=norm_last_layer)

        self.head = head(out_dim)
        self.patch_head = None if shared_head else head(patch_out_dim)
        self.teacher_head = make_teacher(self.head)
        self.teacher_patch_head = None if shared_head else make_teacher(self.patch_head)
        self.loss = IBOTLoss(out_dim, patch_out_dim, 2, 0, student_temp, center_momentum, center_momentum, lambda1, lambda2)
        self.pred_ratio, self.pred_ratio_var, self.min_aspect = pred_ratio, pred_ratio_var, min_aspect
        self.temps = (warmup_teacher_temp, teacher_temp, warmup_teacher_patch_temp, teacher_patch_temp)
        self.warmup_teacher_temp_epochs = check_span(warmup_teacher_temp_epochs, "ibot.warmup_teacher_temp_epochs")
        self.freeze_last_layer = check_span(freeze_last_layer, "ibot.freeze_last_layer")
        self.teacher_temp, self.teacher_patch_temp = warmup_teacher_temp, warmup_teacher_patch_temp

    def ema_pairs(self):
        pairs = [(self.head, self.teacher_head)]
        if self.patch_head is not None:
            pairs.append((self.patch_head, self.teacher_patch_head))
        return pairs

    def update_schedules(self, progress: Progress) -> dict[str, float]:
        warm = progress.iterations(self.warmup_teacher_temp_epochs)
        cls_start, cls_end, patch_start, patch_end = self.temps
        self.teacher_temp = linear(cls_start, cls_end, progress.iteration, warm)
        self.teacher_patch_temp = linear(patch_start, patch_end, progress.iteration, warm)
        return {"teacher_temp": self.teacher_temp, "teacher_patch_temp": self.teacher_patch_temp}

    @staticmethod
    def _heads(cls: torch.Tensor, patches: torch.Tensor, head, patch_head) -> tuple[torch.Tensor, torch.Tensor]:
        """Head outputs of CLS rows (R, D) and patch rows (..., D); one call when the head is shared."""
        if patch_head is not None:
            return head(cls), patch_head(patches)
        flat = patches.reshape(-1, patches.shape[-1])
        out = head(torch.cat([cls, flat]))
        return out[: cls.shape[0]], out[cls.shape[0]:].reshape(*patches.shape[:-1], out.shape[-1])

    def requires(self) -> tuple[str, ...]:
        return ("student_global_masks", "student_masked_global_tokens", "student_local_tokens", "teacher_global_tokens")

    def prepare(self, step: StepCache) -> None:
        """Draw the (G*B, N) block masks of the global crops from the step's seeded rng and provide
        them before any forward, so that CLIP can reuse the unmasked rows of the masked forward."""
        crops, vit = step.view("global_crops"), self.backbones.student_vision
        n_images = len(crops) * crops[0].shape[0]
        masks = generate_block_masks(n_images, vit.grid_size, self.pred_ratio, self.pred_ratio_var, step.rng, self.min_aspect)
        step.provide("student_global_masks", masks.to(crops[0].device))

    def forward(self, step: StepCache) -> dict[str, torch.Tensor]:
        crops = step.view("global_crops")
        masks = step.get("student_global_masks")
        student_tokens = step.get("student_masked_global_tokens")
        # Only masked patches are scored, so the student head runs on those alone: (#masked, K2).
        # The teacher head needs every patch (the patch centre averages all of them).
        student_cls, student_patch = self._heads(student_tokens[:, 0], student_tokens[:, 1:][masks], self.head, self.patch_head)
        local = step.view("local_crops", default=[])
        if local:
            local_cls = step.get("student_local_tokens")[:, 0]
            student_cls = torch.cat([student_cls, self.head(local_cls)])
        with torch.no_grad():
            teacher_tokens = step.get("teacher_global_tokens")
            teacher_cls, teacher_patch = self._heads(
                teacher_tokens[:, 0], teacher_tokens[:, 1:], self.teacher_head, self.teacher_patch_head
            )
        # The view counts come from the batch, so they cannot drift from the transform config.
        self.loss.global_crops, self.loss.local_crops = len(crops), len(local)
        out = self.loss(student_cls, student_patch, teacher_cls, teacher_patch, masks, self.teacher_temp, self.teacher_patch_temp)
        out["mask_ratio"] = masks.float().mean().detach()
        return out

    def before_optimizer_step(self, progress: Progress) -> None:
        if progress.iteration < progress.iterations(self.freeze_last_layer):  # iBOT's cancel_gradients_last_layer
            for head in (self.head, self.patch_head):
                if head is not None:
                    for p in head.last_layer.parameters():
                        p.grad = None
