import re

import pytest
import torch
import torch.nn.functional as F

from hirl_like.evaluation.zeroshot import build_zeroshot_classifier, zeroshot_classify

CLASSNAMES = ["cat", "dog", "car", "tree", "boat", "bird"]
TEMPLATES = ["a photo of a {}.", lambda c: f"itap of the {c}", "{} in the wild"]


class WordEncoder:
    """A hand-built text tower aligned with one-hot "images": class word c -> e_c, other words -> small noise."""

    def __init__(self, dim: int = 16):
        self.vocab: dict[str, int] = {"<pad>": 0}
        self.calls: list[int] = []
        g = torch.Generator().manual_seed(0)
        self.table = 0.05 * torch.randn(64, dim, generator=g)
        self.table[0] = 0.0
        for c, name in enumerate(CLASSNAMES):
            self.table[self._id(name)] = F.one_hot(torch.tensor(c), dim).float()

    def _id(self, word: str) -> int:
        return self.vocab.setdefault(word, len(self.vocab))

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        ids = [[self._id(w) for w in re.findall(r"[a-z]+", t.lower())] for t in texts]
        out = torch.zeros(len(texts), 8, dtype=torch.long)
        for i, row in enumerate(ids):
            out[i, : len(row)] = torch.tensor(row)
        return out

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        self.calls.append(tokens.shape[0])
        return self.table[tokens].sum(dim=1)  # (B, D)


def test_classifier_matches_per_class_reference_and_handles_lambdas():
    enc = WordEncoder()
    clf = build_zeroshot_classifier(enc.encode, enc.tokenize, CLASSNAMES, TEMPLATES, batch_size=4)
    assert clf.shape == (6, 16)
    assert enc.calls == [4, 4, 4, 4, 2]  # 18 prompts batched across classes
    for c, name in enumerate(CLASSNAMES):  # explicit per-class loop: normalise, average, normalise
        prompts = [t(name) if callable(t) else t.format(name) for t in TEMPLATES]
        embs = [F.normalize(enc.encode(enc.tokenize([p]))[0], dim=0) for p in prompts]
        ref = F.normalize(sum(embs) / len(embs), dim=0)
        torch.testing.assert_close(clf[c], ref)
    torch.testing.assert_close(clf.norm(dim=1), torch.ones(6))


def test_aligned_encoder_gets_100_percent():
    enc = WordEncoder()
    clf = build_zeroshot_classifier(enc.encode, enc.tokenize, CLASSNAMES, TEMPLATES)
    g = torch.Generator().manual_seed(1)
    labels = torch.arange(60) % 6
    images = 3.0 * F.one_hot(labels, 16).float() + 0.1 * torch.randn(60, 16, generator=g)
    out = zeroshot_classify(images, labels, clf)
    assert out == {"top1": 100.0, "top5": 100.0}
    wrong = zeroshot_classify(images, (labels + 1) % 6, clf)
    assert wrong["top1"] == 0.0


def test_zeroshot_classify_analytic_topk():
    classifier = torch.eye(6, 4)[:6]  # rows 4 and 5 are zero vectors -> cosine 0
    classifier[4] = torch.tensor([1.0, 1.0, 0.0, 0.0])
    features = torch.tensor([[1.0, 0.2, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    # Row 0: cosines rank class 4 (0.83), then 0 (0.98)... compute: class0 .98, class4 .83, class1 .196.
    labels = torch.tensor([4, 3])
    out = zeroshot_classify(features, labels, classifier)
    assert out["top1"] == 50.0  # row 1 is right, row 0's label is second
    assert out["top5"] == 100.0


def test_bad_templates_are_rejected():
    enc = WordEncoder()
    with pytest.raises(ValueError, match="placeholder"):
        build_zeroshot_classifier(enc.encode, enc.tokenize, CLASSNAMES, ["a photo"])
    with pytest.raises(ValueError, match="at least one"):
        build_zeroshot_classifier(enc.encode, enc.tokenize, [], TEMPLATES)
