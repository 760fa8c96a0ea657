import pytest

from hirl_like.data.captions import (
    DEFAULT_TEMPLATES,
    DIGIT_CLASSNAMES,
    DIGIT_TEMPLATES,
    FASHION_MNIST_CLASSNAMES,
    CaptionGenerator,
    mix_seed,
)


def test_constants():
    assert DIGIT_CLASSNAMES[0] == "zero" and DIGIT_CLASSNAMES[9] == "nine" and len(DIGIT_CLASSNAMES) == 10
    assert FASHION_MNIST_CLASSNAMES[0] == "T-shirt/top" and FASHION_MNIST_CLASSNAMES[9] == "ankle boot"
    assert len(DEFAULT_TEMPLATES) >= 12 and "a photo of a {}." in DEFAULT_TEMPLATES
    assert "a photo of the number {}." in DIGIT_TEMPLATES
    for t in DEFAULT_TEMPLATES + DIGIT_TEMPLATES:
        assert t.count("{}") == 1


def test_mix_seed_is_order_sensitive_and_stable():
    assert mix_seed(1, 0) != mix_seed(0, 1)
    assert mix_seed(3, 4, 5) == mix_seed(3, 4, 5)
    assert 0 <= mix_seed(2**70, -1) < 2**64


def test_no_noise_gives_true_class_and_valid_template():
    gen = CaptionGenerator(DIGIT_CLASSNAMES, DIGIT_TEMPLATES, noise=0.0, seed=0)
    for i in range(200):
        label = i % 10
        cap = gen.caption(i, label, epoch=3)
        assert gen.noisy_label(i, label) == label
        assert cap in {t.format(DIGIT_CLASSNAMES[label]) for t in DIGIT_TEMPLATES}


def test_determinism_and_template_variation():
    a = CaptionGenerator(DIGIT_CLASSNAMES, DIGIT_TEMPLATES, noise=0.3, seed=7)
    b = CaptionGenerator(DIGIT_CLASSNAMES, DIGIT_TEMPLATES, noise=0.3, seed=7)
    # Call order must not matter: pure function of arguments.
    fwd = [a.caption(i, i % 10, 2) for i in range(300)]
    bwd = [b.caption(i, i % 10, 2) for i in reversed(range(300))][::-1]
    assert fwd == bwd
    # Templates change across epochs for most samples; across 10 templates ~90 % differ.
    changed = sum(a.template(i, 0) != a.template(i, 1) for i in range(1000))
    assert 800 < changed < 980
    # All templates get used, roughly uniformly.
    counts = {}
    for i in range(5000):
        counts[a.template(i, 0)] = counts.get(a.template(i, 0), 0) + 1
    assert set(counts) == set(DIGIT_TEMPLATES)
    assert min(counts.values()) > 380  # expected 500 each
    # A different seed gives different choices.
    c = CaptionGenerator(DIGIT_CLASSNAMES, DIGIT_TEMPLATES, noise=0.3, seed=8)
    assert [c.caption(i, i % 10, 2) for i in range(300)] != fwd


@pytest.mark.parametrize("noise", [0.1, 0.5])
def test_noise_fraction_fixed_samples_wrong_class(noise):
    n, classes = 10_000, 10
    gen = CaptionGenerator(DIGIT_CLASSNAMES, ["{}"], noise=noise, seed=3)
    noisy_ids = [i for i in range(n) if gen.noisy_label(i, i % classes) != i % classes]
    # Binomial(n, p): 5 standard deviations.
    sd = (n * noise * (1 - noise)) ** 0.5
    assert abs(len(noisy_ids) - n * noise) < 5 * sd
    # is_noisy agrees with "names a different class": a noisy caption is ALWAYS a wrong class.
    assert noisy_ids == [i for i in range(n) if gen.is_noisy(i)]
    # The same samples are noisy in every epoch, and they name the same wrong class.
    for epoch in (0, 1, 5):
        assert [gen.caption(i, i % classes, epoch) for i in noisy_ids[:200]] == [
            DIGIT_CLASSNAMES[gen.noisy_label(i, i % classes)] for i in noisy_ids[:200]
        ]
    # Wrong class uniform among the other 9: offsets 1..9 each ~1/9 of the noisy ones.
    offsets = [(gen.noisy_label(i, i % classes) - i % classes) % classes for i in noisy_ids]
    assert set(offsets) == set(range(1, 10))
    expected = len(offsets) / 9
    for k in range(1, 10):
        assert abs(offsets.count(k) - expected) < 5 * expected**0.5


def test_full_noise_two_classes_always_flips():
    gen = CaptionGenerator(["cat", "dog"], ["a {}"], noise=1.0)
    assert all(gen.caption(i, 0) == "a dog" for i in range(50))


def test_bad_arguments():
    with pytest.raises(ValueError, match="noise"):
        CaptionGenerator(DIGIT_CLASSNAMES, DIGIT_TEMPLATES, noise=1.5)
    with pytest.raises(ValueError, match="\\{\\}"):
        CaptionGenerator(DIGIT_CLASSNAMES, ["no placeholder"])
    with pytest.raises(ValueError, match="2 classes"):
        CaptionGenerator(["only"], ["{}"], noise=0.1)
    with pytest.raises(ValueError, match="out of range"):
        CaptionGenerator(DIGIT_CLASSNAMES, ["{}"]).noisy_label(0, 10)
