"""The image-text distiller losses (hirl_like/losses/distillers/), each against a naive reference
written from its paper's formula with Python loops over samples, pairs and prototypes, against
analytic values, and for their state (queues, centre, prior, prototypes) a state_dict round trip.
The references use only tests/losses/_reference.py, never the modules' helpers."""

from __future__ import annotations

import math

import pytest
import torch

from hirl_like.losses.distillers.barlow_twins import BarlowTwinsLoss
from hirl_like.losses.distillers.compress import CompRess1qLoss, CompRessLoss
from hirl_like.losses.distillers.dino_vl import CrossModalDINOLoss
from hirl_like.losses.distillers.protoclip import ProtoCLIPLoss
from hirl_like.losses.distillers.protocpc import ProtoCPCLoss
from hirl_like.losses.distillers.rkd import RKDLoss
from hirl_like.losses.distillers.seed import SEEDLoss
from hirl_like.losses.distillers.simreg import SimRegL1Loss, SimRegLoss, SimRegSmoothL1Loss
from hirl_like.losses.distillers.vicreg import VICRegLoss
from hirl_like.registry import LOSSES
from tests.losses._reference import dot, log_softmax, logsumexp, row, soft_ce, softmax


def randn(*shape: int, seed: int = 0, grad: bool = True) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).requires_grad_(grad)


def unit(v: torch.Tensor) -> torch.Tensor:
    return v / torch.sqrt(dot(v, v))


def check_value_and_grad(out: torch.Tensor, ref: torch.Tensor, inputs: list[torch.Tensor], rtol: float = 1e-5) -> None:
    torch.testing.assert_close(out, ref, rtol=rtol, atol=1e-6)
    got = torch.autograd.grad(out, inputs, retain_graph=True)
    want = torch.autograd.grad(ref, inputs, retain_graph=True)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)


def huber(x: torch.Tensor, delta: float = 1.0) -> torch.Tensor:
    return 0.5 * x * x / delta if abs(float(x.detach())) < delta else abs(x) - 0.5 * delta


# -- SimReg ---------------------------------------------------------------------------------------
def naive_simreg(s, t, distance):
    b, d = s.shape
    total = 0.0
    for i in range(b):
        p, q = unit(s[i]), unit(t[i])
        total = total + sum(distance(p[k] - q[k]) for k in range(d)) / b
    return total


@pytest.mark.parametrize(
    "loss,distance",
    [
        (SimRegLoss(), lambda x: x * x),
        (SimRegL1Loss(), lambda x: abs(x)),
        (SimRegSmoothL1Loss(beta=0.3), lambda x: huber(x, 0.3)),
    ],
    ids=["l2", "l1", "smoothl1"],
)
def test_simreg_family_matches_the_per_sample_loop(loss, distance):
    s, t = randn(5, 4, seed=1), randn(5, 4, seed=2)
    check_value_and_grad(loss(s, t)["loss"], naive_simreg(s, t, distance), [s, t])


def test_simreg_analytic_values():
    x = randn(3, 6, seed=3, grad=False)
    assert SimRegLoss()(x, 2 * x)["loss"].item() == pytest.approx(0.0, abs=1e-6)  # same direction
    assert SimRegLoss()(x, -x)["loss"].item() == pytest.approx(4.0, rel=1e-6)  # 2 - 2 cos(pi)
    e1, e2 = torch.eye(2)[:1], torch.eye(2)[1:]
    assert SimRegLoss()(e1, e2)["loss"].item() == pytest.approx(2.0)  # orthogonal: 2 - 2 * 0
    assert SimRegL1Loss()(e1, e2)["loss"].item() == pytest.approx(2.0)  # |1| + |-1|
    assert SimRegSmoothL1Loss(beta=1.0)(e1, e2)["loss"].item() == pytest.approx(1.0)  # 2 x (1 - 1/2)
    assert SimRegSmoothL1Loss(beta=2.0)(e1, e2)["loss"].item() == pytest.approx(0.5)  # 2 x 1^2 / 4


# -- VICReg ---------------------------------------------------------------------------------------
def naive_vicreg(z, z2, lam=25.0, mu=25.0, nu=1.0, gamma=1.0, eps=1e-4):
    n, d = z.shape
    inv = sum(sum((z[i, k] - z2[i, k]) ** 2 for k in range(d)) for i in range(n)) / n

    def variance(x):
        total = 0.0
        for j in range(d):
            m = sum(x[i, j] for i in range(n)) / n
            var = sum((x[i, j] - m) ** 2 for i in range(n)) / (n - 1)
            total = total + torch.relu(gamma - torch.sqrt(var + eps))
        return total / d

    def covariance(x):
        means = [sum(x[i, j] for i in range(n)) / n for j in range(d)]
        total = 0.0
        for a in range(d):
            for b in range(d):
                if a != b:
                    c = sum((x[i, a] - means[a]) * (x[i, b] - means[b]) for i in range(n)) / (n - 1)
                    total = total + c * c
        return total / d

    return lam * inv + mu * (variance(z) + variance(z2)) + nu * (covariance(z) + covariance(z2))


def test_vicreg_matches_the_paper_formula_loop():
    z, z2 = randn(6, 3, seed=4), randn(6, 3, seed=5)
    z2.data *= 1.7  # some dimensions above the std target, some below
    loss = VICRegLoss(sim_coeff=2.0, std_coeff=3.0, cov_coeff=0.5)
    check_value_and_grad(loss(z, z2)["loss"], naive_vicreg(z, z2, 2.0, 3.0, 0.5), [z, z2])


def test_vicreg_analytic_values():
    h = 2.0 * torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])  # std 2.31 > 1, uncorrelated
    out = VICRegLoss()(h, h.clone())
    assert out["loss"].item() == pytest.approx(0.0, abs=1e-6)
    zero = torch.zeros(4, 2)  # std sqrt(1e-4) = 0.01 in every dimension of both: v = 0.99 each
    assert VICRegLoss()(zero, zero)["loss"].item() == pytest.approx(25.0 * 2 * 0.99, rel=1e-6)
    # the invariance is the mean squared *distance* (the paper), not the element mean
    assert VICRegLoss()(h, h + 1.0)["invariance"].item() == pytest.approx(2.0)


# -- Barlow Twins ---------------------------------------------------------------------------------
def naive_barlow(za, zb, lambd, eps=1e-5):
    n, d = za.shape

    def standardise(x, j):
        m = sum(x[i, j] for i in range(n)) / n
        var = sum((x[i, j] - m) ** 2 for i in range(n)) / n
        return [(x[i, j] - m) / torch.sqrt(var + eps) for i in range(n)]

    a = [standardise(za, j) for j in range(d)]
    b = [standardise(zb, j) for j in range(d)]
    total = 0.0
    for i in range(d):
        for j in range(d):
            c = sum(a[i][k] * b[j][k] for k in range(n)) / n
            total = total + ((1 - c) ** 2 if i == j else lambd * c * c)
    return total


def test_barlow_twins_matches_the_cross_correlation_loop():
    za, zb = randn(5, 3, seed=6), randn(5, 3, seed=7)
    check_value_and_grad(BarlowTwinsLoss(lambd=0.3)(za, zb)["loss"], naive_barlow(za, zb, 0.3), [za, zb])
    assert BarlowTwinsLoss(lambd=0.3, loss_scale=0.5)(za, zb)["loss"].item() == pytest.approx(
        0.5 * naive_barlow(za, zb, 0.3).item(), rel=1e-5)


def test_barlow_twins_analytic_values():
    h = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])  # centred, unit variance, uncorrelated
    assert BarlowTwinsLoss()(h, 3 * h + 1)["loss"].item() == pytest.approx(0.0, abs=1e-4)  # C = I
    assert BarlowTwinsLoss()(h, -h)["on_diagonal"].item() == pytest.approx(2 * 4.0, rel=1e-4)  # C = -I


# -- RKD ------------------------------------------------------------------------------------------
def naive_rkd(s, t, w_d, w_a):
    n = s.shape[0]
    s = [unit(s[i]) for i in range(n)]
    t = [unit(t[i]) for i in range(n)]

    def dist(x, i, j):
        v = x[i] - x[j]
        return torch.sqrt(dot(v, v))

    pairs = [(i, j) for i in range(n) for j in range(n) if i != j]
    mu_s = sum(dist(s, i, j) for i, j in pairs) / len(pairs)
    mu_t = sum(dist(t, i, j) for i, j in pairs) / len(pairs)
    l_d = sum(huber(dist(s, i, j) / mu_s - dist(t, i, j) / mu_t) for i, j in pairs) / len(pairs)

    def cos_at(x, i, j, k):  # angle at x_j between x_i and x_k
        return dot(unit(x[i] - x[j]), unit(x[k] - x[j]))

    triplets = [(i, j, k) for i in range(n) for j in range(n) for k in range(n) if len({i, j, k}) == 3]
    l_a = sum(huber(cos_at(s, i, j, k) - cos_at(t, i, j, k)) for i, j, k in triplets) / len(triplets)
    return w_d * l_d + w_a * l_a


def test_rkd_matches_the_pair_and_triplet_loops():
    s, t = randn(5, 3, seed=8), randn(5, 3, seed=9)
    check_value_and_grad(RKDLoss(distance_weight=2.0, angle_weight=3.0)(s, t)["loss"], naive_rkd(s, t, 2.0, 3.0), [s, t])


def test_rkd_is_zero_for_rotated_and_scaled_relations_only():
    t = randn(6, 4, seed=10, grad=False)
    rotation, _ = torch.linalg.qr(randn(4, 4, seed=11, grad=False))
    assert RKDLoss()(3.0 * t @ rotation, t)["loss"].item() == pytest.approx(0.0, abs=1e-5)
    assert RKDLoss()(randn(6, 4, seed=12, grad=False), t)["loss"].item() > 0.1
    # two samples: one pair, no triplet; equal relations after the mean-distance normalisation
    two = RKDLoss()(randn(2, 3, seed=13, grad=False), randn(2, 3, seed=14, grad=False))
    assert two["distance"].item() == pytest.approx(0.0, abs=1e-6) and two["angle"].item() == 0.0


# -- CompRess ---------------------------------------------------------------------------------------
def naive_kl_over_bank(s, t, bank_s, bank_t, tau):
    b, k = s.shape[0], bank_s.shape[0]
    total = 0.0
    for i in range(b):
        si, ti = unit(s[i]), unit(t[i])
        p_t = softmax([dot(ti, bank_t[j]) / tau for j in range(k)])
        log_p_t = log_softmax([dot(ti, bank_t[j]) / tau for j in range(k)])
        log_p_s = log_softmax([dot(si, bank_s[j]) / tau for j in range(k)])
        total = total + sum(p_t[j] * (log_p_t[j] - log_p_s[j]) for j in range(k)) / b
    return total


def test_compress_2q_matches_the_bank_loop_and_enqueues_each_side():
    loss = CompRessLoss(dim=3, queue_size=6, temperature=0.5)
    bank_s, bank_t = loss.student_queue.queue.clone(), loss.teacher_queue.queue.clone()
    s, t = randn(4, 3, seed=15), randn(4, 3, seed=16)
    out = loss(s, t)["loss"]
    check_value_and_grad(out, naive_kl_over_bank(s, t, bank_s, bank_t, 0.5), [s, t])
    torch.testing.assert_close(loss.teacher_queue.queue[:4], torch.nn.functional.normalize(t.detach(), dim=1))
    torch.testing.assert_close(loss.student_queue.queue[:4], torch.nn.functional.normalize(s.detach(), dim=1))
    torch.testing.assert_close(loss.student_queue.queue[4:], bank_s[4:])


def test_compress_1q_uses_the_teacher_bank_for_both_and_no_teacher_gradient():
    loss = CompRess1qLoss(dim=3, queue_size=5, temperature=0.2)
    bank = loss.teacher_queue.queue.clone()
    s, t = randn(4, 3, seed=17), randn(4, 3, seed=18)
    out = loss(s, t)["loss"]
    ref = naive_kl_over_bank(s, t.detach(), bank, bank, 0.2)
    torch.testing.assert_close(out, ref)
    out.backward()
    assert t.grad is None and s.grad is not None
    assert not hasattr(loss, "student_queue")


def test_compress_identical_bank_rows_give_uniform_distributions():
    loss = CompRessLoss(dim=2, queue_size=7)
    for q in (loss.student_queue, loss.teacher_queue):
        q.queue.copy_(torch.tensor([[1.0, 0.0]]).expand(7, 2))
    out = loss(randn(3, 2, seed=19, grad=False), randn(3, 2, seed=20, grad=False))
    assert out["loss"].item() == pytest.approx(0.0, abs=1e-6)
    assert out["teacher_entropy"].item() == pytest.approx(math.log(7), rel=1e-5)


# -- SEED -------------------------------------------------------------------------------------------
def naive_seed(s, t, bank, tau_s, tau_t):
    b, k = s.shape[0], bank.shape[0]
    total = 0.0
    for i in range(b):
        si, ti = unit(s[i]), unit(t[i].detach())
        anchors = [ti] + [bank[j] for j in range(k)]
        p_t = softmax([dot(ti, a) / tau_t for a in anchors])
        total = total + soft_ce(p_t, [dot(si, a) / tau_s for a in anchors]) / b
    return total


def test_seed_matches_the_loop_over_queue_and_own_teacher_and_enqueues():
    loss = SEEDLoss(dim=3, queue_size=5, student_temp=0.3, teacher_temp=0.1)
    bank = loss.queue.queue.clone()
    s, t = randn(4, 3, seed=21), randn(4, 3, seed=22)
    out = loss(s, t)["loss"]
    torch.testing.assert_close(out, naive_seed(s, t, bank, 0.3, 0.1))
    torch.testing.assert_close(torch.autograd.grad(out, s, retain_graph=True)[0],
                               torch.autograd.grad(naive_seed(s, t, bank, 0.3, 0.1), s)[0], rtol=1e-4, atol=1e-6)
    out.backward()
    assert t.grad is None
    torch.testing.assert_close(loss.queue.queue[:4], torch.nn.functional.normalize(t.detach(), dim=1))


def test_seed_student_orthogonal_to_every_anchor_gives_log_of_k_plus_one():
    loss = SEEDLoss(dim=3, queue_size=4)
    loss.queue.queue.copy_(torch.tensor([[0.0, 1.0, 0.0]]).expand(4, 3))
    s, t = torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[1.0, 0.0, 0.0]])
    assert loss(s, t)["loss"].item() == pytest.approx(math.log(5), rel=1e-6)


# -- DINO across modalities -------------------------------------------------------------------------
def test_cross_modal_dino_matches_the_loop_and_updates_the_centre_after():
    loss = CrossModalDINOLoss(out_dim=5, student_temp=0.2, center_momentum=0.7)
    loss.center.fill_(0.3)
    s, t = randn(4, 5, seed=23), randn(4, 5, seed=24)
    out = loss(s, t, teacher_temp=0.05)["loss"]
    ref = sum(soft_ce(softmax([(x - 0.3) / 0.05 for x in row(t[i])]), [x / 0.2 for x in row(s[i])]) for i in range(4)) / 4
    check_value_and_grad(out, ref, [s])
    torch.testing.assert_close(loss.center, 0.7 * 0.3 + 0.3 * t.detach().mean(0, keepdim=True))
    out.backward()
    assert t.grad is None


def test_cross_modal_dino_uniform_scores_give_log_k():
    assert CrossModalDINOLoss(out_dim=7)(torch.zeros(3, 7), torch.zeros(3, 7), 0.04)["loss"].item() == pytest.approx(math.log(7))


# -- ProtoCPC -------------------------------------------------------------------------------------
def test_protocpc_matches_the_loop_with_the_updated_prior():
    k, m = 4, 0.6
    loss = ProtoCPCLoss(out_dim=k, student_temp=0.2, prior_momentum=m)
    old_prior = [1.5, 0.5, 1.0, 1.0]
    loss.prior.copy_(torch.tensor([old_prior]))
    s, t = randn(3, k, seed=25), randn(3, k, seed=26)
    out = loss(s, t, teacher_temp=0.1)["loss"]
    q = [softmax([x / 0.1 for x in row(t[i].detach())]) for i in range(3)]
    mass = [sum(q[i][j] for i in range(3)) for j in range(k)]
    prior = [m * old_prior[j] + (1 - m) * k * mass[j] / sum(mass) for j in range(k)]
    ref = 0.0
    for i in range(3):
        scaled = [s[i, j] / 0.2 for j in range(k)]
        ref = ref + (-sum(q[i][j] * scaled[j] for j in range(k)) + logsumexp([scaled[j] + math.log(float(prior[j])) for j in range(k)])) / 3
    check_value_and_grad(out, ref, [s])
    torch.testing.assert_close(loss.prior, torch.stack([torch.as_tensor(p) for p in prior]).reshape(1, k).float())
    out.backward()
    assert t.grad is None


def test_protocpc_with_a_uniform_prior_is_the_soft_cross_entropy_and_log_k_when_uniform():
    s, t = randn(3, 5, seed=27, grad=False), randn(3, 5, seed=28, grad=False)
    loss = ProtoCPCLoss(out_dim=5, prior_momentum=1.0)  # the prior stays at 1
    ref = sum(soft_ce(softmax([x / 0.04 for x in row(t[i])]), [x / 0.1 for x in row(s[i])]) for i in range(3)) / 3
    torch.testing.assert_close(loss(s, t, 0.04)["loss"], ref)
    assert ProtoCPCLoss(out_dim=6)(torch.zeros(2, 6), torch.zeros(2, 6), 0.04)["loss"].item() == pytest.approx(math.log(6))


# -- ProtoCLIP ------------------------------------------------------------------------------------
def set_prototypes(loss: ProtoCLIPLoss, c_img, c_txt, p_img, p_txt) -> None:
    loss.image_centroids.copy_(c_img)
    loss.text_centroids.copy_(c_txt)
    loss.image_students.copy_(p_img)
    loss.text_students.copy_(p_txt)
    loss.episodes.fill_(1)


def naive_protoclip(zi, zt, c_img, c_txt, p_img, p_txt, scale, tau):
    b, k = zi.shape[0], c_img.shape[0]

    def direction(z_student, z_teacher, teacher_centroids, students):
        total = 0.0
        for n in range(b):
            zs, zt_ = unit(z_student[n]), unit(z_teacher[n].detach())
            sims = [float(dot(zt_, teacher_centroids[j])) for j in range(k)]
            y = sims.index(max(sims))
            target = softmax([dot(teacher_centroids[y], teacher_centroids[j]) / tau for j in range(k)])
            total = total + soft_ce(target, [scale * dot(zs, students[j]) for j in range(k)]) / b
        return total

    return (direction(zi, zt, c_txt, p_img) + direction(zt, zi, c_img, p_txt)) / 2


def test_protoclip_term_matches_the_loop():
    k, d = 4, 3
    loss = ProtoCLIPLoss(dim=d, num_prototypes=k, episode_size=50, target_temperature=0.5)
    protos = [torch.nn.functional.normalize(randn(k, d, seed=30 + i, grad=False), dim=1) for i in range(4)]
    set_prototypes(loss, *protos)
    zi, zt = randn(5, d, seed=34), randn(5, d, seed=35)
    scale = torch.tensor(3.0)
    out = loss(zi, zt, scale)["loss"]
    check_value_and_grad(out, naive_protoclip(zi, zt, *protos, 3.0, 0.5), [zi, zt])


def test_protoclip_zero_student_prototypes_give_log_k_and_no_prototypes_give_zero():
    loss = ProtoCLIPLoss(dim=3, num_prototypes=5, episode_size=20)
    z = randn(4, 3, seed=36, grad=False)
    assert loss(z, z, torch.tensor(10.0))["loss"].item() == 0.0  # first episode: InfoNCE only
    c = torch.nn.functional.normalize(randn(5, 3, seed=37, grad=False), dim=1)
    set_prototypes(loss, c, c, torch.zeros(5, 3), torch.zeros(5, 3))
    assert loss(z, z, torch.tensor(10.0))["loss"].item() == pytest.approx(math.log(5), rel=1e-6)


def test_protoclip_episode_clusters_once_full_with_back_translation():
    torch.manual_seed(0)
    centres = torch.eye(3)
    text_cluster = torch.arange(12) % 3
    image_cluster = (text_cluster + 1) % 3  # the image clusters are the text clusters relabelled
    zt = centres[text_cluster] + 0.01 * torch.randn(12, 3)
    zi = centres[image_cluster] + 0.01 * torch.randn(12, 3)
    loss = ProtoCLIPLoss(dim=3, num_prototypes=3, episode_size=12, target_temperature=None, kmeans_restarts=1)
    scale = torch.tensor(1.0)
    loss(zi[:6], zt[:6], scale)
    loss(zi[6:], zt[6:], scale)
    assert not loss.has_prototypes and loss.memory.ready
    out = loss(zi[:2], zt[:2], scale, seed=3)  # the episode is full: cluster first
    assert loss.has_prototypes and int(loss.episodes) == 1 and int(loss.memory.fresh) == 2
    # every text centroid is one of the true centres; PBT: the image prototype of text cluster c is
    # the mean image of its members, i.e. centre c + 1
    for j in range(3):
        c = int(torch.argmax(loss.text_centroids[j]))
        torch.testing.assert_close(loss.text_centroids[j], centres[c], atol=0.03, rtol=0)
        torch.testing.assert_close(loss.image_students[j], centres[(c + 1) % 3], atol=0.03, rtol=0)
    assert out["acc_i2t"].item() == 100.0 and out["acc_t2i"].item() == 100.0


def test_protoclip_without_pbt_scores_against_the_other_sides_centroids():
    loss = ProtoCLIPLoss(dim=2, num_prototypes=2, episode_size=4, pbt=False, kmeans_restarts=1)
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.02], [0.02, 1.0]])
    loss(z, -z, torch.tensor(1.0))
    loss(z[:1], -z[:1], torch.tensor(1.0))
    torch.testing.assert_close(loss.image_students, loss.text_centroids)
    torch.testing.assert_close(loss.text_students, loss.image_centroids)


# -- state in the checkpoint, registry ------------------------------------------------------------
STATEFUL = [
    (lambda: CompRessLoss(dim=3, queue_size=8), ("student_queue.queue", "teacher_queue.queue", "teacher_queue.ptr")),
    (lambda: CompRess1qLoss(dim=3, queue_size=8), ("teacher_queue.queue", "teacher_queue.ptr")),
    (lambda: SEEDLoss(dim=3, queue_size=8), ("queue.queue", "queue.ptr")),
    (lambda: CrossModalDINOLoss(out_dim=3), ("center",)),
    (lambda: ProtoCPCLoss(out_dim=3), ("prior",)),
    (lambda: ProtoCLIPLoss(dim=3, num_prototypes=2, episode_size=6, kmeans_restarts=1),
     ("memory.image", "memory.text", "memory.ptr", "memory.fresh", "image_centroids", "text_students", "episodes")),
]


@pytest.mark.parametrize("make,keys", STATEFUL, ids=["compress2q", "compress1q", "seed", "dino", "protocpc", "protoclip"])
def test_state_round_trips_through_state_dict(make, keys):
    torch.manual_seed(0)
    loss = make()
    for step in range(4):
        a, b = randn(3, 3, seed=40 + step, grad=False), randn(3, 3, seed=50 + step, grad=False)
        args = (torch.tensor(2.0),) if isinstance(loss, ProtoCLIPLoss) else (0.1,) if isinstance(loss, (CrossModalDINOLoss, ProtoCPCLoss)) else ()
        loss(a, b, *args)
    state = loss.state_dict()
    assert set(keys) <= set(state)
    fresh = make()
    assert any(not torch.equal(fresh.state_dict()[k], state[k]) for k in keys)  # training changed the state
    fresh.load_state_dict(state)
    for k in keys:
        assert torch.equal(fresh.state_dict()[k], state[k]), k
    a, b = randn(3, 3, seed=99, grad=False), randn(3, 3, seed=98, grad=False)
    torch.testing.assert_close(fresh(a, b, *args)["loss"], loss(a, b, *args)["loss"])


NAMES = ["SimRegLoss", "SimRegL1Loss", "SimRegSmoothL1Loss", "VICRegLoss", "BarlowTwinsLoss", "RKDLoss",
         "CompRessLoss", "CompRess1qLoss", "SEEDLoss", "CrossModalDINOLoss", "ProtoCPCLoss", "ProtoCLIPLoss"]


@pytest.mark.parametrize("name", NAMES)
def test_registered_and_builds_with_defaults(name):
    assert type(LOSSES.build({"name": name})).__name__ == name


@pytest.mark.parametrize(
    "cfg,match",
    [
        ({"name": "SimRegSmoothL1Loss", "beta": 0.0}, "beta"),
        ({"name": "VICRegLoss", "eps": 0.0}, "eps"),
        ({"name": "BarlowTwinsLoss", "lambd": -1.0}, "lambd"),
        ({"name": "RKDLoss", "angle_weight": -1.0}, "angle_weight"),
        ({"name": "CompRessLoss", "temperature": 0.0}, "temperature"),
        ({"name": "SEEDLoss", "queue_size": 0}, "queue_size"),
        ({"name": "CrossModalDINOLoss", "center_momentum": 2.0}, "center_momentum"),
        ({"name": "ProtoCPCLoss", "out_dim": 0}, "out_dim"),
        ({"name": "ProtoCLIPLoss", "num_prototypes": 10, "episode_size": 5}, "num_prototypes"),
    ],
)
def test_bad_arguments_name_the_argument(cfg, match):
    with pytest.raises(ValueError, match=match):
        LOSSES.build(cfg)


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match=r"must both be \(B, D\)"):
        SimRegLoss()(torch.zeros(2, 3), torch.zeros(2, 4))
