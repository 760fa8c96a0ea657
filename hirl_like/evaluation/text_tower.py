"""The text side of a CLIP-style run, as zero-shot classification and retrieval use it.

Embeddings follow training (``pipelines/forwards/text.py``)::

    image: normalize(P_img @ cls)            cls = the ViT's CLS feature (B, W), P_img (E, W)
    text:  text_model(tokens) = P_txt @ x_eot  (B, E), normalised by the metric code

:func:`hirl_like.export.load_text_tower` builds one from ``main_text_checkpoint.pth`` or a full
``checkpoint.pth``; this module only holds the parts, it reads no file.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hirl_like.data.tokenizer import trim_to_batch_length

Tokenizer = Callable[[list[str]], Tensor]  # B strings -> (B, L) token ids


class TextTower(nn.Module):
    """Text encoder + image projection of one run, in eval mode.

    Args:
        text: the text model, (B, L) token ids -> (B, E) embeddings.
        image_projection: bias-free Linear W -> E applied to the ViT's CLS feature, or a builder
            tower's projection head (any module with ``in_features`` W and ``out_features`` E).
        tokenizer: list of B strings -> (B, L) token ids.
        logit_scale: the trained CLIP temperature exp(t), when known (reported; the metrics rank
            by cosine and do not need it).
    """

    def __init__(
        self, text: nn.Module, image_projection: nn.Module, tokenizer: Tokenizer, logit_scale: float | None = None
    ) -> None:
        super().__init__()
        if isinstance(image_projection, nn.Linear) and image_projection.bias is not None:
            raise ValueError("the image projection of a CLIP text tower has no bias; got a Linear with one.")
        self.text = text.eval()
        self.image_projection = image_projection.eval()
        self.tokenizer = tokenizer
        self.logit_scale = logit_scale

    @property
    def embed_dim(self) -> int:
        """E, the joint image-text space size."""
        return int(self.image_projection.out_features)

    @property
    def vision_width(self) -> int:
        """W, the CLS feature size the image projection takes."""
        return int(self.image_projection.in_features)

    @property
    def device(self) -> torch.device:
        return next(self.text.parameters()).device

    @torch.no_grad()
    def encode_text(self, tokens: Tensor) -> Tensor:
        """(N, L) token ids (any device) -> (N, E) float32 text embeddings, not normalised.

        The ids are first cut to the call's batch length (longest prompt or caption rounded up to
        a multiple of 8, ``hirl_like.data.tokenizer.trim_to_batch_length``), whatever tokenizer
        made them: zero-shot prompts hold ~10 real tokens of a 77-token context, and the embedding
        is the same at any padded length.
        """
        return self.text(trim_to_batch_length(tokens).to(self.device)).float()

    @torch.no_grad()
    def encode_image(self, cls: Tensor) -> Tensor:
        """(N, W) CLS features (any device) -> (N, E) float32 unit-norm image embeddings."""
        return F.normalize(self.image_projection(cls.to(self.device)).float(), dim=-1)
