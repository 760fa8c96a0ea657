"""Vision Transformer on timm with the two extra paths the objectives need.

- iBOT path: ``forward_tokens(x, mask=...)`` replaces masked patch embeddings by a learned
  mask token *before* position embeddings are added (iBOT, BEiT).
- MAE path: ``forward_tokens(x, ids_keep=...)`` drops removed patches after position embedding,
  so the encoder runs on the visible tokens only (MAE's ~3x saving).

The module is a ``timm.models.vision_transformer.VisionTransformer`` subclass, so its state dict
(minus ``mask_token``) loads strictly into ``timm.create_model(timm_name, num_classes=0,
img_size=..., patch_size=...)``; :meth:`export_state_dict` writes exactly those keys.
Attention goes through timm's fused ``scaled_dot_product_attention``; no attention maps are kept.

``grad_checkpointing=True`` (config key ``pipeline.vision.grad_checkpointing``) recomputes each
block in the backward pass (``torch.utils.checkpoint``, ``use_reentrant=False``) on every path
(plain, iBOT mask token, MAE token drop, local crops): the activation memory of the blocks falls
from ``depth`` blocks to about one, for ~1/3 more compute. The RNG state is saved and restored
around the recomputation, so drop path draws the same paths and the gradients are those of the
plain forward. Only active while gradients are recorded (EMA teachers, evaluation: no cost).
timm's own flag of the same name is set too, so timm's ``forward_features`` honours it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from timm.models.vision_transformer import VisionTransformer as TimmVisionTransformer

from hirl_like.registry import MODELS

# arch -> (embed_dim, depth, num_heads, timm model family name)
VIT_ARCHS: dict[str, tuple[int, int, int, str]] = {
    "vit_tiny": (192, 12, 3, "vit_tiny_patch16_224"),
    "vit_small": (384, 12, 6, "vit_small_patch16_224"),
    "vit_base": (768, 12, 12, "vit_base_patch16_224"),
    "vit_large": (1024, 24, 16, "vit_large_patch16_224"),
}


@MODELS.register("vit", aliases=("VisionTransformer",))
class VisionTransformer(TimmVisionTransformer):
    """timm ViT (``num_classes=0``) with an optional iBOT mask token and an MAE token-drop path.

    Args:
        arch: one of ``VIT_ARCHS`` (vit_tiny/small/base/large).
        img_size, patch_size: input and patch size (digits use 32 and 4).
        drop_path_rate: stochastic depth (Harmony student: 0.1; teachers: 0).
        depth, embed_dim, num_heads: override the arch's value (tiny test models).
        mask_token: create the learned iBOT mask token (only pipelines that mask need it;
            an unused parameter would upset DDP).
        pos_embed: "learned" (CLIP/iBOT) or "sincos" (fixed 2-D sin-cos, MAE's encoder).
        grad_checkpointing: recompute every block in the backward pass to save activation memory.
    """

    def __init__(
        self,
        arch: str = "vit_small",
        img_size: int = 224,
        patch_size: int = 16,
        drop_path_rate: float = 0.0,
        depth: int | None = None,
        embed_dim: int | None = None,
        num_heads: int | None = None,
        mask_token: bool = False,
        pos_embed: str = "learned",
        grad_checkpointing: bool = False,
    ) -> None:
        if arch not in VIT_ARCHS:
            raise ValueError(f"unknown ViT arch {arch!r}; choose one of {sorted(VIT_ARCHS)}.")
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} must be a multiple of patch_size {patch_size}.")
        if pos_embed not in ("learned", "sincos"):
            raise ValueError(f"pos_embed must be 'learned' or 'sincos', got {pos_embed!r}.")
        default_dim, default_depth, default_heads, timm_name = VIT_ARCHS[arch]
        self.timm_kwargs: dict[str, Any] = {
            "img_size": img_size,
            "patch_size": patch_size,
            "embed_dim": embed_dim or default_dim,
            "depth": depth or default_depth,
            "num_heads": num_heads or default_heads,
            "num_classes": 0,
        }
        # dynamic_img_size: local crops (e.g. 96 px) get bicubically resampled position
        # embeddings; the parameters and state-dict keys are unchanged.
        super().__init__(drop_path_rate=drop_path_rate, dynamic_img_size=True, **self.timm_kwargs)
        self.arch = arch
        self.timm_name = timm_name
        self.set_grad_checkpointing(bool(grad_checkpointing))  # timm's attribute: self.grad_checkpointing
        self.grid_size: tuple[int, int] = tuple(self.patch_embed.grid_size)  # type: ignore[assignment]
        self.mask_token = nn.Parameter(torch.zeros(1, 1, self.embed_dim)) if mask_token else None
        if self.mask_token is not None:
            nn.init.normal_(self.mask_token, std=0.02)
        if pos_embed == "sincos":
            from hirl_like.models.pos_embed import sincos_2d_pos_embed

            table = sincos_2d_pos_embed(self.embed_dim, *self.grid_size, cls_token=True)
            self.pos_embed.data.copy_(table.unsqueeze(0))
            self.pos_embed.requires_grad_(False)

    @property
    def num_patches(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    def forward_tokens(
        self,
        images: torch.Tensor,
        mask: torch.Tensor | None = None,
        ids_keep: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Normalised output tokens.

        Args:
            images: (B, 3, H, W).
            mask: (B, N) bool, True = replace that patch embedding by the mask token (iBOT).
                Images of another size than ``img_size`` (local crops) get resampled position
                embeddings.
            ids_keep: (B, K) long, indices of the patches to keep (MAE); others are dropped.
        Returns:
            (B, 1 + N, D) tokens, or (B, 1 + K, D) with ``ids_keep``; index 0 is CLS.
        """
        x = self.patch_embed(images)  # (B, h, w, D) with dynamic_img_size
        if mask is not None:
            if self.mask_token is None:
                raise ValueError("this ViT was built without mask_token=True; the iBOT path needs it.")
            w = mask.reshape(*x.shape[:-1], 1).to(x.dtype)
            x = x * (1 - w) + self.mask_token.to(x.dtype) * w
        x = self._pos_embed(x)  # adds position embeddings, prepends CLS: (B, 1 + N, D)
        if ids_keep is not None:
            patches = torch.gather(x[:, 1:], 1, ids_keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
            x = torch.cat([x[:, :1], patches], dim=1)
        x = self.norm_pre(x)
        x = self.run_blocks(x)
        return self.norm(x)

    def run_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (B, T, D) through every block, each checkpointed when ``grad_checkpointing``
        is on and gradients are recorded (one block's activations kept at a time)."""
        if not (self.grad_checkpointing and torch.is_grad_enabled()):
            return self.blocks(x)
        for block in self.blocks:
            x = checkpoint(block, x, use_reentrant=False)
        return x

    @torch.no_grad()
    def cls_attention(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, N): the last block's attention of [CLS] to each patch, averaged over
        heads (rows sum to 1 minus the [CLS]->[CLS] weight). No grad. The fused attention keeps no
        weights, so the last block's query-key product is recomputed here from its input."""
        x = self.norm_pre(self._pos_embed(self.patch_embed(images)))
        for block in self.blocks[:-1]:
            x = block(x)
        last = self.blocks[-1]
        attn = last.attn
        b, t, _ = x.shape
        qkv = attn.qkv(last.norm1(x)).reshape(b, t, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
        weights = ((q[:, :, :1] * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # (B, heads, 1, T)
        return weights[:, :, 0, 1:].mean(dim=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, D) CLS features (what evaluation uses)."""
        return self.forward_tokens(images)[:, 0]

    def export_state_dict(self) -> dict[str, torch.Tensor]:
        """State dict with exactly timm's keys (no mask token), for ``main_vit_checkpoint.pth``."""
        return {k: v.detach().clone() for k, v in self.state_dict().items() if k != "mask_token"}
