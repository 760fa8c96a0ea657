"""CLIP zero-shot classification (Radford et al. 2021, prompt ensembling).

Class embedding:  w_c = normalize( mean_t normalize( f_text(template_t(classname_c)) ) )
Prediction:       argmax_c cos(f_image(x), w_c)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from hirl_like.evaluation.knn import topk_hits

Template = str | Callable[[str], str]


def _fill(template: Template, classname: str) -> str:
    if callable(template):
        text = template(classname)
        if not isinstance(text, str):
            raise ValueError(f"template {template!r} returned {type(text).__name__}, expected str.")
        return text
    if isinstance(template, str):
        if "{}" not in template:
            raise ValueError(
                f"string template {template!r} has no '{{}}' placeholder for the class name, e.g. 'a photo of a {{}}.'"
            )
        return template.format(classname)
    raise ValueError(f"a template must be a str with '{{}}' or a callable str -> str, got {type(template).__name__}.")


@torch.no_grad()
def build_zeroshot_classifier(
    encode_text: Callable[[Tensor], Tensor],
    tokenizer: Callable[[list[str]], Tensor],
    classnames: Sequence[str],
    templates: Sequence[Template],
    batch_size: int = 256,
) -> Tensor:
    """Prompt-ensembled class embeddings, (C, D), unit norm.

    Args:
        encode_text: token ids (B, L) -> text embeddings (B, D). It receives the tokenizer's
            output unchanged, so move tokens to the model's device inside it, e.g.
            ``lambda t: model.encode_text(t.to(device))``; put the model in eval mode first.
        tokenizer: list of B strings -> (B, L) token ids (e.g. ``open_clip.get_tokenizer(...)``).
        classnames: C class names.
        templates: T templates, each a format string with "{}" or a callable classname -> str
            (open_clip's OPENAI_IMAGENET_TEMPLATES are lambdas); both kinds may be mixed.
        batch_size: prompts per encode_text call (the C*T prompts are batched across classes).
    """
    if len(classnames) == 0 or len(templates) == 0:
        raise ValueError(f"need at least one class name and one template; got {len(classnames)} and {len(templates)}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    prompts = [_fill(t, c) for c in classnames for t in templates]  # class-major: row c*T + t
    chunks = []
    for start in range(0, len(prompts), batch_size):
        emb = encode_text(tokenizer(prompts[start : start + batch_size]))
        if emb.ndim != 2:
            raise ValueError(f"encode_text must return (B, D) embeddings, got shape {tuple(emb.shape)}.")
        chunks.append(F.normalize(emb.float(), dim=-1))
    per_prompt = torch.cat(chunks).view(len(classnames), len(templates), -1)  # (C, T, D)
    return F.normalize(per_prompt.mean(dim=1), dim=-1)


@torch.no_grad()
def zeroshot_classify(image_features: Tensor, labels: Tensor, classifier: Tensor) -> dict[str, float]:
    """Top-1 / top-5 (%) of cosine argmax over class embeddings.

    image_features: (N, D); labels: (N,) in [0, C); classifier: (C, D) (normalised here again).
    "top5" is top-min(5, C). Ties with the true class count as misses (see knn.topk_hits).
    """
    if image_features.ndim != 2 or classifier.ndim != 2 or image_features.shape[1] != classifier.shape[1]:
        raise ValueError(
            f"image_features (N, D) and classifier (C, D) must share D; got {tuple(image_features.shape)} "
            f"and {tuple(classifier.shape)}."
        )
    if labels.shape != (image_features.shape[0],) or image_features.shape[0] == 0:
        raise ValueError(f"labels must be (N,) = ({image_features.shape[0]},) with N > 0, got {tuple(labels.shape)}.")
    num_classes = classifier.shape[0]
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}) to index the classifier's rows.")
    classifier = F.normalize(classifier.float(), dim=-1).to(image_features.device)
    logits = F.normalize(image_features.float(), dim=-1) @ classifier.T  # (N, C)
    top5 = min(5, num_classes)
    hits = topk_hits(logits, labels.to(logits.device).long(), (1, top5))
    n = image_features.shape[0]
    return {"top1": 100.0 * hits[1] / n, "top5": 100.0 * hits[top5] / n}
