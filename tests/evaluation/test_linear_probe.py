import math

import pytest
import torch
from torch import nn

from hirl_like.evaluation.linear_probe import linear_probe, stratified_split, train_linear_heads


@pytest.fixture(autouse=True)
def _one_thread():
    """Hundreds of tiny SGD steps: intra-op threads only add synchronisation cost on a busy CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _separable(n, seed, c=4, d=8):
    g = torch.Generator().manual_seed(seed)
    centers = 4.0 * torch.randn(c, d, generator=torch.Generator().manual_seed(123))
    y = torch.arange(n) % c
    x = centers[y] + 0.5 * torch.randn(n, d, generator=g)
    return x, y


def _reference_single_head(x, y, num_classes, lr, epochs, batch_size, weight_decay, seed):
    """One nn.Linear with torch.optim.SGD and an explicit cosine lr, same init and batch order."""
    n, d = x.shape
    gen = torch.Generator().manual_seed(seed)
    w0 = torch.randn(d, num_classes, generator=gen) * 0.01
    head = nn.Linear(d, num_classes)
    with torch.no_grad():
        head.weight.copy_(w0.T)
        head.bias.zero_()
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    total = epochs * math.ceil(n / batch_size)
    step = 0
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            for group in opt.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / total))
            opt.zero_grad()
            nn.functional.cross_entropy(head(x[idx]), y[idx]).backward()
            opt.step()
            step += 1
    return head.weight.detach().T, head.bias.detach()


def test_many_heads_equal_independent_training():
    x, y = _separable(50, seed=0)
    lrs = [0.003, 0.05, 0.4]
    w, b = train_linear_heads(x, y, 4, lrs, epochs=3, batch_size=16, weight_decay=1e-3, seed=7)
    assert w.shape == (3, 8, 4) and b.shape == (3, 4)
    for h, lr in enumerate(lrs):
        ref_w, ref_b = _reference_single_head(x, y, 4, lr, epochs=3, batch_size=16, weight_decay=1e-3, seed=7)
        torch.testing.assert_close(w[h], ref_w, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(b[h], ref_b, atol=1e-5, rtol=1e-4)


def test_separable_data_reaches_high_accuracy_and_picks_lr_on_validation():
    x, y = _separable(240, seed=1)
    xt, yt = _separable(120, seed=2)
    lrs = (1e-6, 1e-2, 1e-1)
    out = linear_probe(x, y, xt, yt, num_classes=4, learning_rates=lrs, epochs=15, batch_size=32, seed=0)
    assert out["test_top1"] > 95.0
    assert out["test_top5"] == 100.0  # top-min(5, 4): always contains the label
    assert set(out["val_top1"]) == set(lrs)
    assert out["best_lr"] == max(lrs, key=lambda lr: out["val_top1"][lr])
    assert out["best_lr"] != 1e-6 and out["val_top1"][1e-6] < out["val_top1"][out["best_lr"]]
    assert out["val_size"] == 24 and out["train_size"] == 216 and out["final_train_size"] == 240

    # Selection never looks at the test labels: shuffling them changes only the test score.
    shuffled = yt[torch.randperm(len(yt), generator=torch.Generator().manual_seed(5))]
    out2 = linear_probe(x, y, xt, shuffled, num_classes=4, learning_rates=lrs, epochs=15, batch_size=32, seed=0)
    assert out2["best_lr"] == out["best_lr"] and out2["val_top1"] == out["val_top1"]
    assert out2["test_top1"] < 50.0

    # Deterministic from the seed.
    assert linear_probe(x, y, xt, yt, num_classes=4, learning_rates=lrs, epochs=15, batch_size=32, seed=0) == out


def test_stratified_split_keeps_class_proportions():
    y = torch.tensor([0] * 40 + [1] * 20 + [2] * 10)
    fit, val = stratified_split(y, 0.1, seed=0)
    assert torch.bincount(y[val]).tolist() == [4, 2, 1]
    assert sorted(torch.cat([fit, val]).tolist()) == list(range(70))
    single = stratified_split(torch.tensor([0, 1, 1]), 0.5, seed=0)  # a lone sample stays in training
    assert 0 in single[0].tolist()


def test_invalid_arguments():
    x, y = _separable(40, seed=0)
    with pytest.raises(ValueError, match="val_fraction"):
        linear_probe(x, y, x, y, 4, learning_rates=(0.1, 0.01), val_fraction=0.0)
    with pytest.raises(ValueError, match="num_classes"):
        linear_probe(x, y, x, y, 3)
    # A single lr with val_fraction=0 trains on everything, with nothing to select.
    out = linear_probe(x, y, x, y, 4, learning_rates=(0.1,), val_fraction=0.0, epochs=2)
    assert out["val_top1"] == {} and out["best_lr"] == 0.1 and out["val_size"] == 0
