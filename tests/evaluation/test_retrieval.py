import pytest
import torch
import torch.nn.functional as F

from hirl_like.evaluation.retrieval import class_retrieval_recall, retrieval_recall


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
    # Shuffling the pairs breaks the alignment: recall falls from the aligned pairs' value.
    assert retrieval_recall(images, texts, shuffled)["t2i_r1"] < retrieval_recall(images, texts, t2i)["t2i_r1"]


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


# --------------------------------------------------------------------------------------------
# class-level retrieval (templated captions)
# --------------------------------------------------------------------------------------------
def _class_reference(images, image_labels, texts, text_labels, ks):
    """Explicit loops; ties broken against the query (a negative equal to a positive ranks first)."""
    images, texts = F.normalize(images.double(), dim=1), F.normalize(texts.double(), dim=1)

    def recall(queries, q_labels, keys, k_labels, k):
        hits = 0
        for q, ql in zip(queries, q_labels):
            order = sorted(range(len(keys)), key=lambda j: (-float(q @ keys[j]), int(k_labels[j]) == int(ql)))
            hits += any(int(k_labels[j]) == int(ql) for j in order[:k])
        return 100.0 * hits / len(queries)

    out = {f"i2t_r{k}": recall(images, image_labels, texts, text_labels, k) for k in ks}
    out.update({f"t2i_r{k}": recall(texts, text_labels, images, image_labels, k) for k in ks})
    return out


def test_class_retrieval_matches_reference():
    g = torch.Generator().manual_seed(3)
    image_labels = torch.randint(0, 4, (15,), generator=g)
    text_labels = torch.randint(0, 4, (9,), generator=g)
    centres = torch.randn(4, 6, generator=g)
    images = centres[image_labels] + 1.5 * torch.randn(15, 6, generator=g)
    texts = centres[text_labels] + 1.5 * torch.randn(9, 6, generator=g)
    out = class_retrieval_recall(images, image_labels, texts, text_labels, ks=(1, 2, 5), batch_size=4)
    ref = _class_reference(images, image_labels, texts, text_labels, (1, 2, 5))
    assert out.keys() == ref.keys()
    for key in ref:
        assert out[key] == pytest.approx(ref[key]), key
    assert 0.0 < out["i2t_r1"] < 100.0


def test_class_retrieval_with_identical_class_captions():
    # One caption per class, all images of a class on its caption: instance recall is capped by
    # ties, class recall is 100; a caption collapsed onto another class's direction scores 0.
    image_labels = torch.tensor([0, 0, 1, 1])
    images = torch.tensor([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0], [0.01, 1.0]])
    texts = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text_labels = torch.tensor([0, 1])
    out = class_retrieval_recall(images, image_labels, texts, text_labels, ks=(1,))
    assert out == {"i2t_r1": 100.0, "t2i_r1": 100.0}
    swapped = class_retrieval_recall(images, image_labels, texts, torch.tensor([1, 0]), ks=(1,))
    assert swapped == {"i2t_r1": 0.0, "t2i_r1": 0.0}


def test_class_retrieval_needs_one_label_per_item():
    with pytest.raises(ValueError, match="one label per image"):
        class_retrieval_recall(torch.randn(3, 2), torch.zeros(2, dtype=torch.long), torch.randn(2, 2), torch.zeros(2, dtype=torch.long))
