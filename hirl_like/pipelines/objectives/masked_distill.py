"""Masked self-distillation (MaskCLIP, Dong et al. 2023) as reproduced by the Harmony authors.

MaskCLIP has no official code. This follows the reproduction described in the Harmony paper
(Appendix C): the student ViT sees a 75%-masked image, a 1-layer decoder at the encoder's width
fills in the removed patches, the EMA teacher sees the full image, and an iBOT-style loss
(centred and sharpened cross-entropy between head outputs) is taken on the masked patches.
MaskCLIP = ``objectives: {clip: 1.0, masked_distill: 0.05, mlm: 0.05}`` with EMA 0.999 -> 0.9999.

Choices where the description leaves room (documented so results can be read correctly):
- Masking drops tokens as MAE does (``random_masking``, per-image noise argsort): the encoder runs
  on the visible 25% only; every image has the same number of masked patches.
- The decoder restores the full sequence in the original patch order with a learned mask token
  and adds the student ViT's own position embeddings (shared, not a second table) to every token,
  as MAE's decoder adds its table, then one pre-norm Transformer block and a final LayerNorm.
- Image: global crop 1, so the teacher's forward is the one CLIP's soft targets and iBOT use.
- Heads: iBOT's (d -> 2048 -> 2048 -> 256, L2-norm, weight-normed 256 -> K), the teacher head an
  EMA copy; the centre is this objective's own buffer.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor, nn
from timm.models.vision_transformer import Block

from hirl_like.data.masking import random_masking
from hirl_like.losses.distill_ce import ema_update_center_, masked_mean_ce
from hirl_like.models.heads import DINOHead
from hirl_like.pipelines.backbones import Backbones
from hirl_like.pipelines.objective import HeadDistillationObjective
from hirl_like.pipelines.step_cache import StepCache
from hirl_like.registry import OBJECTIVES
from hirl_like.schedules import Span


def _init_vit_style(module: nn.Module) -> None:
    """timm ViT init: trunc-normal(0.02) Linear weights, zero biases, LayerNorm (1, 0)."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class MaskedTokenDecoder(nn.Module):
    """Fill removed patches back in and predict their features at the encoder's width.

    Args:
        dim: encoder width D (the decoder keeps it, so the heads see tokens of the same size).
        depth: Transformer blocks (MaskCLIP reproduction: 1).
        num_heads, mlp_ratio: block shape.
    """

    def __init__(self, dim: int, depth: int = 1, num_heads: int = 6, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if dim <= 0 or depth < 1:
            raise ValueError(f"MaskedTokenDecoder: dim must be > 0 and depth >= 1, got dim={dim}, depth={depth}.")
        if num_heads <= 0 or dim % num_heads:
            raise ValueError(f"MaskedTokenDecoder: dim ({dim}) must be divisible by num_heads ({num_heads}).")
        self.dim = dim
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        norm_layer = partial(nn.LayerNorm, eps=1e-6)  # timm ViT's LayerNorm eps
        self.blocks = nn.ModuleList(
            Block(dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=True, norm_layer=norm_layer) for _ in range(depth)
        )
        self.norm = norm_layer(dim)
        self.apply(_init_vit_style)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, tokens: Tensor, ids_restore: Tensor, pos_embed: Tensor) -> Tensor:
        """
        Args:
            tokens: (B, 1 + K, D) encoder output: CLS, then the K visible patches in kept order.
            ids_restore: (B, N) long from ``random_masking``: position j of the full sequence is
                element ``ids_restore[b, j]`` of ``[kept..., removed...]``.
            pos_embed: (1, 1 + N, D) position embeddings (CLS slot first).
        Returns:
            (B, N, D) features of every patch in the original order (CLS dropped).
        """
        b, n = ids_restore.shape
        if tokens.dim() != 3 or tokens.shape[0] != b or tokens.shape[-1] != self.dim:
            raise ValueError(f"tokens must be (B={b}, 1 + K, {self.dim}), got {tuple(tokens.shape)}.")
        if pos_embed.shape[-2:] != (1 + n, self.dim):
            raise ValueError(f"pos_embed must be (1, {1 + n}, {self.dim}), got {tuple(pos_embed.shape)}.")
        kept = tokens.shape[1] - 1
        shuffled = torch.cat([tokens[:, 1:], self.mask_token.to(tokens.dtype).expand(b, n - kept, -1)], dim=1)
        index = ids_restore.unsqueeze(-1).expand(-1, -1, self.dim)
        x = torch.cat([tokens[:, :1], torch.gather(shuffled, 1, index)], dim=1) + pos_embed.to(tokens.dtype)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)[:, 1:]


@OBJECTIVES.register("masked_distill")
class MaskedDistillObjective(HeadDistillationObjective):
    """MaskCLIP's masked self-distillation (the Harmony authors' reproduction; see module docstring).

    ``L = mean_b mean_{n in masked(b)} H(softmax((h_t(T(x)_n) - c) / T_t), log_softmax(h_s(Dec(S(x_vis))_n) / T_s))``

    with T the EMA teacher ViT on the full crop, S the student ViT on the visible patches, h_t/h_s
    the heads, and ``c <- m c + (1 - m) mean(h_t(...))`` over the scored (masked) patches of all
    ranks. The teacher head runs on the masked patches only: the random masks make them a uniform
    random sample of the image's patches, so the centre estimates the same mean as iBOT's
    all-patch centre, at 75% of the cost.

    Args:
        mask_ratio: fraction of patches removed (0.75).
        decoder_depth: decoder blocks (1); decoder_heads: None = the ViT's own head count.
        out_dim, head_hidden_dim, head_bottleneck_dim, head_nlayers, norm_last_layer: the heads
            (iBOT: 8192, 2048, 256, 3, True).
        teacher_temp / warmup_teacher_temp / warmup_teacher_temp_epochs: as iBOT's patch term
            (0.04 -> 0.07, linear per iteration).
        student_temp, center_momentum: 0.1, 0.9.
        freeze_last_layer: epochs during which the student head's last layer gets no update.

    Returns ``{"loss", "mask_ratio"}``.
    """

    views = ("global_crops",)

    def __init__(
        self,
        backbones: Backbones,
        mask_ratio: float = 0.75,
        decoder_depth: int = 1,
        decoder_heads: int | None = None,
        out_dim: int = 8192,
        head_hidden_dim: int = 2048,
        head_bottleneck_dim: int = 256,
        head_nlayers: int = 3,
        norm_last_layer: bool = True,
        teacher_temp: float = 0.07,
        warmup_teacher_temp: float = 0.04,
        warmup_teacher_temp_epochs: Span = 3.0,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
        freeze_last_layer: Span = 1.0,
    ) -> None:
        super().__init__(backbones)
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"masked_distill.mask_ratio must lie in (0, 1), got {mask_ratio}.")
        for name, value in (
            ("teacher_temp", teacher_temp), ("warmup_teacher_temp", warmup_teacher_temp), ("student_temp", student_temp)
        ):
            if not value > 0:
                raise ValueError(f"masked_distill.{name} must be > 0, got {value}.")
        if not 0.0 <= center_momentum <= 1.0:
            raise ValueError(f"masked_distill.center_momentum must lie in [0, 1], got {center_momentum}.")
        backbones.require_vision_teacher()
        vit = backbones.student_vision
        dim = vit.embed_dim
        heads = decoder_heads if decoder_heads is not None else vit.blocks[0].attn.num_heads
        self.mask_ratio = mask_ratio
        self.decoder = MaskedTokenDecoder(dim, decoder_depth, heads)
        head = DINOHead(dim, out_dim, head_hidden_dim, head_bottleneck_dim, head_nlayers, norm_last_layer=norm_last_layer)
        self.setup_distillation(head, warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs, freeze_last_layer)
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.student_temp = student_temp
        self.center_momentum = center_momentum

    def requires(self) -> tuple[str, ...]:
        return ("teacher_global_tokens",)

    def draw_mask(self, step: StepCache) -> tuple[Tensor, Tensor, Tensor]:
        """(ids_keep (B, K), mask (B, N) bool True = removed, ids_restore (B, N)) from the step's generator."""
        vit = self.backbones.student_vision
        image = step.view("global_crops")[0]
        out = random_masking(image.shape[0], vit.num_patches, self.mask_ratio, step.generator)
        return tuple(t.to(image.device) for t in out)  # type: ignore[return-value]

    def forward(self, step: StepCache) -> dict[str, torch.Tensor]:
        image = step.view("global_crops")[0]
        b = image.shape[0]
        vit = self.backbones.student_vision
        ids_keep, mask, ids_restore = self.draw_mask(step)
        visible = vit.forward_tokens(image, ids_keep=ids_keep)  # (B, 1 + K, D)
        predicted = self.decoder(visible, ids_restore, vit.pos_embed)  # (B, N, D)
        m = int(mask[0].sum())  # the same count for every image (random_masking keeps floor(N(1-r)))
        # Boolean selection keeps row-major order, so student and teacher rows stay aligned.
        student = self.head(predicted[mask]).view(b, m, -1)
        with torch.no_grad():
            teacher_patches = step.get("teacher_global_tokens")[:b, 1:]  # crop 1, unmasked, (B, N, D)
            teacher = self.teacher_head(teacher_patches[mask]).view(b, m, -1)
        scored = torch.ones(b, m, dtype=torch.bool, device=image.device)
        loss = masked_mean_ce(student, teacher, self.center, scored, self.student_temp, self.teacher_temp)
        ema_update_center_(self.center, teacher, self.center_momentum)
        return {"loss": loss, "mask_ratio": mask.float().mean().detach()}
