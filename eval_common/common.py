"""What every evaluation script shares: arguments, the config beside the checkpoint, the
backbone (strictly loaded), datasets, distributed feature extraction and the report.

``--pretrained`` is the only required flag when a ``config.yaml`` sits beside the checkpoint:
architecture, data and tokenizer come from it. ``key=value`` arguments override that config
(e.g. ``data.name=FashionMNIST``), flags override the rest.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from collections.abc import Callable
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

import hirl_like  # noqa: E402,F401
from hirl_like.config import ConfigError, load_config  # noqa: E402
from hirl_like.data.build import build_eval_dataset  # noqa: E402,F401  (eval_zeroshot imports it from here)
from hirl_like.data.loader import build_eval_loader  # noqa: E402
from hirl_like.distributed import barrier  # noqa: E402
from hirl_like.engine.dist_setup import DistInfo, cleanup_distributed, init_distributed  # noqa: E402
from hirl_like.evaluation.checkpoint_loading import (  # noqa: E402
    extract_state_dict,
    load_backbone_strict,
    load_checkpoint_file,
)
from hirl_like.evaluation.features import extract_features  # noqa: E402
from hirl_like.evaluation.report import write_json  # noqa: E402
from hirl_like.registry import MODELS, RegistryError  # noqa: E402

# Our full training checkpoint keeps the pipeline's state under "model"; the EMA teacher is the
# backbone evaluations use (as iBOT/DINO), the student when a method has no teacher.
PIPELINE_VISION_PREFIXES = ("backbones.teacher_vision.", "backbones.student_vision.")


def eval_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, allow_abbrev=False)
    parser.add_argument("--pretrained", required=True, help="checkpoint: main_vit_checkpoint.pth, checkpoint.pth, a timm/DINO/iBOT state dict")
    parser.add_argument("--config", default=None, help="training config (default: config.yaml beside the checkpoint)")
    parser.add_argument("--model_prefix", default=None, help="sub-dictionary of the checkpoint holding the weights (e.g. teacher, model, state_dict)")
    parser.add_argument("--backbone_prefix", default=None, help="key prefix to strip (e.g. backbone., module.backbone.)")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--num_workers", type=int, default=2)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--output_dir", default=None, help="where eval_<name>.json goes (default: beside the checkpoint)")
    parser.add_argument("--train_split", default="train")
    parser.add_argument("--test_split", default="val")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the training config (e.g. data.name=FashionMNIST)")
    return parser


def resolve_config(args: argparse.Namespace) -> DictConfig:
    config = Path(args.config) if args.config else Path(args.pretrained).resolve().parent / "config.yaml"
    if not config.is_file():
        raise ConfigError(
            f"no config found at {config}: pass --config with the training config of {args.pretrained} "
            "(it gives the architecture and the data)."
        )
    return load_config(config, args.overrides)


def build_backbone(cfg: DictConfig) -> torch.nn.Module:
    """The student ViT of ``cfg.pipeline.vision`` without drop path (evaluation mode)."""
    vision = dict(cfg.pipeline.vision)
    vision["drop_path_rate"] = 0.0
    return MODELS.build(vision).eval()


def load_pretrained_backbone(cfg: DictConfig, args: argparse.Namespace) -> tuple[torch.nn.Module, str]:
    """Backbone with the checkpoint's weights loaded strictly; returns it and a note of what was read."""
    model = build_backbone(cfg)
    expected = set(model.state_dict())
    model_prefix, backbone_prefix = args.model_prefix, args.backbone_prefix
    checkpoint = load_checkpoint_file(args.pretrained)
    if model_prefix is None and backbone_prefix is None and isinstance(checkpoint.get("model"), dict) and "config" in checkpoint:
        keys = checkpoint["model"].keys()
        for prefix in PIPELINE_VISION_PREFIXES:
            if any(k.startswith(prefix) for k in keys):
                model_prefix, backbone_prefix = "model", prefix
                break
    optional = {"mask_token"} if "mask_token" in expected else set()
    state = extract_state_dict(
        checkpoint, model_prefix=model_prefix, backbone_prefix=backbone_prefix, expected_keys=expected - optional
    )
    if optional and "mask_token" not in state:
        state["mask_token"] = model.state_dict()["mask_token"]
    load_backbone_strict(model, state)
    source = f"{args.pretrained}" + (f" [{model_prefix or ''}:{backbone_prefix or ''}]" if model_prefix or backbone_prefix else "")
    return model, source


def features_for_split(
    model: torch.nn.Module,
    cfg: DictConfig,
    split: str,
    args: argparse.Namespace,
    dist: DistInfo,
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """(N, D) features and (N,) labels of one split, in dataset order, on every rank.

    ``forward`` maps images (B, 3, H, W) on ``dist.device`` to (B, D) features; the default is the
    backbone's CLS feature ``model(x)``. The model is moved to ``dist.device`` first.
    """
    dataset = build_eval_dataset(cfg, split)
    loader = build_eval_loader(dataset, args.batch_size, args.num_workers, rank=dist.rank, world_size=dist.world_size)
    model = model.to(dist.device)
    feats, labels = extract_features(forward or (lambda x: model(x)), loader, dist.device)
    return feats.float().cpu(), labels.cpu(), dataset


def token_features(model: torch.nn.Module, avgpool: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    """Frozen features for the linear probe (DINO's ``eval_linear.py`` with n_last_blocks = 1).

    images (B, 3, H, W) -> CLS (B, D), or with ``avgpool`` [CLS, mean of the patch tokens] (B, 2D),
    both read from the final (normalised) token sequence of ``model.forward_tokens``. Register
    tokens, when the ViT has any, are neither CLS nor patches and are left out of the mean.
    """
    if not hasattr(model, "forward_tokens"):
        raise ValueError(f"{type(model).__name__} has no forward_tokens(images) -> (B, 1 + N, D); use a ViT backbone.")
    prefix = int(getattr(model, "num_prefix_tokens", 1))

    def forward(images: torch.Tensor) -> torch.Tensor:
        tokens = model.forward_tokens(images)  # (B, prefix + N, D), index 0 = CLS
        cls = tokens[:, 0]
        if not avgpool:
            return cls
        return torch.cat([cls, tokens[:, prefix:].mean(dim=1)], dim=-1)

    return forward


def num_classes_of(dataset: Any, labels: torch.Tensor) -> int:
    """The dataset's class count (its class names), else the largest label + 1."""
    return len(getattr(dataset, "classnames", ()) or ()) or int(labels.max()) + 1


def output_path(args: argparse.Namespace, name: str) -> Path:
    folder = Path(args.output_dir) if args.output_dir else Path(args.pretrained).resolve().parent
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"eval_{name}.json"


def start(args: argparse.Namespace) -> tuple[DictConfig, DistInfo]:
    if not Path(args.pretrained).exists():  # before the config lookup, so the error names the checkpoint
        raise FileNotFoundError(f"checkpoint file not found: {args.pretrained} (check --pretrained).")
    cfg = resolve_config(args)
    torch.manual_seed(int(cfg.seed))
    return cfg, init_distributed(device=args.device)


def write_report(args: argparse.Namespace, name: str, payload: dict[str, Any]) -> Path:
    """Write ``eval_<name>.json`` ({"metric": name, **payload}) and say where (call on rank 0)."""
    path = output_path(args, name)
    write_json(path, {"metric": name, **payload})
    print(f"wrote {path}")
    return path


def run_script(main: Callable[[], int | None]) -> None:
    """Run an evaluation's ``main``; bad input (config, paths, checkpoints) ends with a one-line
    error and exit code 2. On success every rank waits for rank 0's report before the process
    group closes; the group is closed either way."""
    try:
        code = main()
        barrier()
    except (ConfigError, RegistryError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        code = 2
    finally:
        cleanup_distributed()
    sys.exit(code or 0)
