"""Per-objective gradient norms: equal to each term's own backward, write no .grad, and leave the
training result unchanged; logged as grad_norm/<objective> every log window."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hirl_like.config import load_config
from hirl_like.data.bad_samples import BAD_KEY
from hirl_like.data.loader import build_train_loader
from hirl_like.engine.checkpoint import load_checkpoint
from hirl_like.engine.dist_setup import init_distributed
from hirl_like.engine.grad_norms import objective_grad_norms
from hirl_like.engine.trainer import Trainer
from hirl_like.schedules import Progress

ROOT = Path(__file__).resolve().parents[2]
HARMONY = ROOT / "configs/quickstart/harmony_vit_tiny_digits.yaml"
HARMONY_FAST = [
    "batch_size=16", "num_workers=0", "progress_bar=false", "tensorboard=false", "pipeline.vision.depth=1",
    "pipeline.text.layers=1", "epochs=2", "pipeline.ibot.out_dim=64", "pipeline.ibot.patch_out_dim=64",
    "pipeline.text_distill.out_dim=64", "pipeline.mae.decoder_depth=1", "pipeline.mlm.decoder_depth=1",
    # 1 of 3 masked patches: iBOT, MAE and CLIP all reach the ViT in every step
    "pipeline.ibot.pred_ratio=0.3", "pipeline.ibot.pred_ratio_var=0.0",
]


def toy() -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    shared, head_a, head_b, other = (torch.nn.Linear(4, 4), torch.nn.Linear(4, 1), torch.nn.Linear(4, 1), torch.nn.Linear(4, 1))
    x = torch.randn(8, 4)
    h = shared(x)
    terms = {"a": 0.5 * head_a(h).pow(2).mean(), "b": head_b(torch.tanh(h)).mean(), "not_shared": other(x).mean()}
    return shared, terms


def test_norms_equal_each_terms_own_backward_and_write_no_grad():
    shared, terms = toy()
    norms = objective_grad_norms(terms, list(shared.parameters()))
    assert all(p.grad is None for p in shared.parameters())  # autograd.grad returns, never accumulates
    assert set(norms) == {"a", "b"}  # "not_shared" does not reach the shared parameters
    for name in ("a", "b"):
        shared.zero_grad(set_to_none=True)
        terms[name].backward(retain_graph=True)
        expected = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in shared.parameters()]))
        assert norms[name] == pytest.approx(expected.item(), rel=1e-6)
    # The loss scale of fp16 training is taken out again.
    scaled = objective_grad_norms(terms, list(shared.parameters()), scale=1024.0)
    assert scaled == pytest.approx(norms, rel=1e-6)


def first_batches(cfg, trainer: Trainer, n: int) -> list[dict]:
    loader = build_train_loader(trainer.dataset, batch_size=trainer.batch_size, num_workers=0, seed=int(cfg.seed), epoch=0)
    batches = []
    for batch in loader:
        batch.pop(BAD_KEY, None)
        batches.append(batch)
        if len(batches) == n:
            return batches
    raise AssertionError("too few batches")


def test_measuring_does_not_change_the_training_result(tmp_path):
    """4 Harmony steps measuring every step end with the weights of 4 steps that never measure."""
    states, measured = [], []
    for measure in (True, False):
        cfg = load_config(HARMONY, [f"output_dir={tmp_path / str(measure)}", *HARMONY_FAST])
        trainer = Trainer(cfg, init_distributed(device="cpu"))
        trainer.pipeline.train()
        for i, batch in enumerate(first_batches(cfg, trainer, 4)):
            values = trainer.train_step(batch, Progress(i, trainer.iters_per_epoch, trainer.schedule_iterations, 0),
                                        measure_grad_norms=measure)
            measured.append({k: v for k, v in values.items() if k.startswith("grad_norm/")})
        states.append({k: v.clone() for k, v in trainer.pipeline.state_dict().items()})
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key
    with_norms, without = measured[:4], measured[4:]
    assert all(set(m) == {"grad_norm/clip", "grad_norm/ibot", "grad_norm/mae"} for m in with_norms), with_norms
    assert all(v > 0 for m in with_norms for v in m.values())
    assert without == [{}] * 4


def test_fit_logs_grad_norms_once_per_log_window(tmp_path):
    cfg = load_config(HARMONY, [f"output_dir={tmp_path}", *HARMONY_FAST, "max_iterations=4", "log_interval=2"])
    trainer = Trainer(cfg, init_distributed(device="cpu"))
    calls = []
    original = trainer.train_step

    def spy(batch, progress, measure_grad_norms=False):
        calls.append(measure_grad_norms)
        return original(batch, progress, measure_grad_norms)

    trainer.train_step = spy  # type: ignore[method-assign]
    trainer.fit()
    assert calls == [False, True, False, True]  # the last step of each 2-step window
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    train = [r for r in records if r["type"] == "train"]
    assert len(train) == 2 and all({"grad_norm/clip", "grad_norm/ibot", "grad_norm/mae", "grad_norm"} <= set(r) for r in train)
    assert load_checkpoint(tmp_path / "checkpoint.pth")["iteration"] == 4
