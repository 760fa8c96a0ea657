"""ClipLoss, SigLipLoss, SimCLRLoss (and the centre updates of IBOTLoss / TextDistillLoss) on a
2-process gloo group with B rows each, against one process on the concatenated 2B batch.

What is compared, precisely (W = 2 ranks, L = the single-process loss on the 2B batch):
- loss: the MEAN over ranks of each rank's "loss" (and "hard" / "soft") equals L. Every loss here
  averages over its local rows, so this is open_clip's "local loss" convention.
- feature gradients: after each rank calls backward on its own loss, the gradient of the rank's
  local features equals W * dL/d(its rows of the features). The gather's backward all-reduces, so a
  rank receives d(sum_r loss_r)/dx_local = d(W * L)/dx_local; DDP's averaging of parameter
  gradients then divides by W, giving exactly dL/dtheta.
- replicated scalars (logit scale, logit bias): the MEAN over ranks of their gradients equals dL/ds,
  i.e. what DDP's gradient averaging produces.
- centres: after one forward, every rank's centre buffers equal the single process's centres, also
  when the ranks hold different numbers of real (non-padding) tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hirl_like.losses.clip import ClipLoss
from hirl_like.losses.ibot import IBOTLoss
from hirl_like.losses.siglip import SigLipLoss
from hirl_like.losses.simclr import SimCLRLoss
from hirl_like.losses.text_distill import TextDistillLoss
from tests.losses._two_ranks import ranks_and_single

WORLD, B, D, VIEWS, GLOBAL, N, K = 2, 3, 4, 3, 2, 5, 6


def _inputs() -> dict[str, torch.Tensor]:
    """The full 2B batch; rank r owns rows [r*B, (r+1)*B) of every per-sample tensor."""
    g = torch.Generator().manual_seed(0)
    unit = lambda: F.normalize(torch.randn(WORLD * B, D, generator=g), dim=-1)  # noqa: E731
    valid = torch.ones(WORLD * B, N, dtype=torch.bool)
    valid[:B, 2:] = False  # rank 0 holds 6 real tokens, rank 1 holds 15: a count-weighted mean matters
    return {
        "img": unit(), "txt": unit(), "t_img": unit(), "t_txt": unit(),
        "z1": torch.randn(WORLD * B, D, generator=g), "z2": torch.randn(WORLD * B, D, generator=g),
        "s_cls": torch.randn(VIEWS, WORLD * B, K, generator=g), "t_cls": torch.randn(GLOBAL, WORLD * B, K, generator=g),
        "s_patch": torch.randn(GLOBAL, WORLD * B, N, K, generator=g),
        "t_patch": torch.randn(GLOBAL, WORLD * B, N, K, generator=g),
        "masks": torch.rand(GLOBAL, WORLD * B, N, generator=g) < 0.5,
        "s_tok": torch.randn(WORLD * B, N, K, generator=g), "t_tok": torch.randn(WORLD * B, N, K, generator=g),
        "tok_mask": torch.rand(WORLD * B, N, generator=g) < 0.5, "valid": valid,
    }


def _leaf(x: torch.Tensor) -> torch.Tensor:
    return x.detach().clone().requires_grad_(True)


def _compute(x: dict[str, torch.Tensor], lo: int, hi: int) -> dict[str, torch.Tensor]:
    """Run every loss on rows [lo, hi) (all rows in the single process) and collect what is compared."""
    res: dict[str, torch.Tensor] = {}
    img, txt, s = _leaf(x["img"][lo:hi]), _leaf(x["txt"][lo:hi]), _leaf(torch.tensor(4.0))
    out = ClipLoss()(img, txt, s, 0.3, x["t_img"][lo:hi], x["t_txt"][lo:hi])
    out["loss"].backward()
    res.update(clip_loss=out["loss"].detach(), clip_hard=out["hard"], clip_soft=out["soft"],
               clip_gimg=img.grad, clip_gtxt=txt.grad, clip_gs=s.grad)

    img, txt = _leaf(x["img"][lo:hi]), _leaf(x["txt"][lo:hi])
    s, bias = _leaf(torch.tensor(5.0)), _leaf(torch.tensor(-2.0))
    out = SigLipLoss(soft_temperature=0.2)(img, txt, s, bias, 0.4, x["t_img"][lo:hi], x["t_txt"][lo:hi])
    out["loss"].backward()
    res.update(sig_loss=out["loss"].detach(), sig_hard=out["hard"], sig_soft=out["soft"],
               sig_gimg=img.grad, sig_gtxt=txt.grad, sig_gs=s.grad, sig_gb=bias.grad)

    z1, z2 = _leaf(x["z1"][lo:hi]), _leaf(x["z2"][lo:hi])
    out = SimCLRLoss()(z1, z2)
    out["loss"].backward()
    res.update(simclr_loss=out["loss"].detach(), simclr_g1=z1.grad, simclr_g2=z2.grad)

    ibot = IBOTLoss(out_dim=K, patch_out_dim=K, global_crops=GLOBAL, local_crops=VIEWS - GLOBAL)
    out = ibot(x["s_cls"][:, lo:hi].reshape(-1, K), x["s_patch"][:, lo:hi].reshape(-1, N, K),
               x["t_cls"][:, lo:hi].reshape(-1, K), x["t_patch"][:, lo:hi].reshape(-1, N, K),
               x["masks"][:, lo:hi].reshape(-1, N), 0.04, 0.07)
    res.update(ibot_loss=out["loss"], ibot_c=ibot.center, ibot_c2=ibot.center2)

    td = TextDistillLoss(out_dim=K)
    out = td(x["s_tok"][lo:hi], x["t_tok"][lo:hi], x["tok_mask"][lo:hi], x["valid"][lo:hi], 0.05)
    res.update(td_loss=out["loss"], td_c=td.center)
    return {k: v.detach().clone() for k, v in res.items()}


def test_two_ranks_equal_one_process_on_the_concatenated_batch(tmp_path):
    ranks, single = ranks_and_single(_compute, _inputs, B, WORLD, tmp_path)
    close = lambda a, b: torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)  # noqa: E731

    for key in ("clip_loss", "clip_hard", "clip_soft", "sig_loss", "sig_hard", "sig_soft", "simclr_loss",
                "ibot_loss", "td_loss"):
        close(torch.stack([r[key] for r in ranks]).mean(), single[key])
    for key in ("clip_gimg", "clip_gtxt", "sig_gimg", "sig_gtxt", "simclr_g1", "simclr_g2"):
        close(torch.cat([r[key] for r in ranks]), WORLD * single[key])
        assert single[key].abs().sum() > 0
    for key in ("clip_gs", "sig_gs", "sig_gb"):
        close(torch.stack([r[key] for r in ranks]).mean(), single[key])
    for key in ("ibot_c", "ibot_c2", "td_c"):
        for r in ranks:
            close(r[key], single[key])
    # the unequal token counts make a plain mean of per-rank means differ from the right centre
    x = _inputs()
    per_rank = torch.stack([x["t_tok"][r * B:(r + 1) * B][x["valid"][r * B:(r + 1) * B]].mean(0) for r in range(WORLD)])
    assert not torch.allclose(0.1 * per_rank.mean(0), single["td_c"].flatten(), atol=1e-4)
