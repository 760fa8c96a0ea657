import pytest
import torch
import torch.nn.functional as F

from hirl_like.evaluation.retrieval import retrieval_recall


def _reference(images, texts, t2i, ks):
    """Sort every query's candidates by cosine (explicit loops) and look for a correct one in the top k."""
    images, texts = F.normalize(images.double(), dim=1), F.normalize(texts.double(), dim=1)
    out = {}
    for k in ks:
        hits = 0
        for i in range(len(images)):
            order = sorted(range(len(texts)), key=lambda j: -float(images[i] @ texts[j]))
            hits += any(int(t2i[j]) == i for j in order[:k])
        out[f"i2t_r{k}"] = 100.0 * hits / len(images)
        hits = 0
        for j in range(len(texts)):
            order = sorted(range(len(images)), key=lambda i: -float(texts[j] @ images[i]))
            hits += int(t2i[j]) in order[:k]
        out[f"t2i_r{k}"] = 100.0 * hits / len(texts)
    return out


def _pairs(seed=0, n=12, per_image=3, d=10, noise=0.1):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, d, generator=g)
    t2i = torch.arange(n).repeat_interleave(per_image)
    texts = images[t2i] + noise * torch.randn(n * per_image, d, generator=g)
    return images, texts, t2i


def test_aligned_features_give_full_recall():
    images, texts, t2i = _pairs()
    out = retrieval_recall(images, texts, t2i)
    assert out == {f"{d}_r{k}": 100.0 for d in ("i2t", "t2i") for k in (1, 5, 10)}


@pytest.mark.parametrize("noise", [1.0, 3.0])
def test_matches_reference_on_noisy_and_shuffled_pairs(noise):
    images, texts, t2i = _pairs(seed=1, noise=noise)
    shuffled = t2i[torch.randperm(len(t2i), generator=torch.Generator().manual_seed(2))]
    for mapping in (t2i, shuffled):
        out = retrieval_recall(images, texts, mapping, ks=(1, 3, 5), batch_size=5)
        ref = _reference(images, texts, mapping, (1, 3, 5))
        assert out.keys() == ref.keys()
        for key in ref:
            assert out[key] == pytest.approx(ref[key]), key
    assert retrieval_recall(images, texts, shuffled)["t2i_r1"] < 30.0


def test_any_caption_counts_for_image_to_text():
    # Image 0 has captions 0, 1, 2; only caption 2 points its way. Image 1 has caption 3.
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    texts = torch.tensor([[-1.0, 0.1], [-1.0, -0.1], [1.0, 0.05], [0.1, 1.0]])
    t2i = torch.tensor([0, 0, 0, 1])
    out = retrieval_recall(images, texts, t2i, ks=(1, 2))
    assert out["i2t_r1"] == 100.0
    # Captions 0 and 1 rank image 1 first (cos > cos with image 0, which is negative).
    assert out["t2i_r1"] == 50.0 and out["t2i_r2"] == 100.0


def test_ties_count_as_misses():
    images = torch.ones(4, 3)
    texts = torch.ones(4, 3)
    out = retrieval_recall(images, texts, torch.arange(4), ks=(1, 4))
    assert out["i2t_r1"] == 0.0 and out["t2i_r1"] == 0.0
    assert out["i2t_r4"] == 100.0 and out["t2i_r4"] == 100.0


def test_image_without_caption_is_an_error():
    with pytest.raises(ValueError, match="no caption"):
        retrieval_recall(torch.randn(3, 4), torch.randn(2, 4), torch.tensor([0, 2]))
