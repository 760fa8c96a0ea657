"""What every evaluation command shares: its arguments, the config beside the checkpoint, the
process group, the models named on the command line, features of a split and the report.

``--pretrained`` is the only required flag when a ``config.yaml`` sits beside the checkpoint:
architecture, data and tokenizer come from it. ``key=value`` arguments override that config
(e.g. ``data.name=FashionMNIST``), flags override the rest. Reading checkpoints is
:mod:`hirl_like.export`'s job; the metrics are :mod:`hirl_like.evaluation`'s.

Foreign checkpoints (HIRL's, MoCo's, ...) as HIRL's scripts read them::

    eval_common/eval_knn.py --pretrained moco_r50.pth.tar --arch resnet50
        --backbone_prefix module.encoder_q. data.name=FashionMNIST transform.global_size=224

``--arch`` replaces the config's ``pipeline.vision`` (:func:`arch_vision_node`); with no config
file the run starts from the package defaults and the data must be named by an override. The
images are evaluated at :func:`hirl_like.data.build.eval_image_size` (a ViT's ``img_size``, else the
training crop size: ``transform.global_size``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from hirl_like.cli.common import INPUT_ERRORS
from hirl_like.config import ConfigError, load_config, split_override
from hirl_like.config.components import constructor_defaults, renames
from hirl_like.data.build import build_eval_dataset, eval_image_size
from hirl_like.data.loader import build_eval_loader
from hirl_like.distributed import barrier
from hirl_like.engine.dist_setup import DistInfo, cleanup_distributed, init_distributed
from hirl_like.evaluation.features import extract_features, has_tokens
from hirl_like.evaluation.report import write_json
from hirl_like.evaluation.text_tower import TextTower
from hirl_like.export import (
    TEXT_EXPORT_NAME,
    TOWERS,
    build_vision_backbone,
    default_text_checkpoint,
    load_text_tower,
    load_vision_backbone,
)
from hirl_like.models.resnet import RESNET_ARCHS
from hirl_like.models.vit import VIT_ARCHS
from hirl_like.registry import MODELS

PRETRAINED, RANDOM_INIT = "pretrained", "random init"  # the model labels of tables and JSON
ARCHS = (*sorted(RESNET_ARCHS), *VIT_ARCHS)  # the names --arch takes (HIRL's --arch values)


# ----------------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------------


def eval_parser(description: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pretrained", required=True, help="checkpoint: main_vit_checkpoint.pth, checkpoint.pth, a timm/DINO/iBOT/MoCo/HIRL state dict")
    parser.add_argument("--config", default=None, help="training config (default: config.yaml beside the checkpoint)")
    parser.add_argument("--model_prefix", default=None, help="sub-dictionary of the checkpoint holding the weights (e.g. teacher, model, state_dict)")
    parser.add_argument("--backbone_prefix", default=None,
                        help="key prefix to strip (e.g. backbone., module.backbone., MoCo's module.encoder_q.)")
    parser.add_argument("--arch", default=None, choices=ARCHS, metavar="NAME",
                        help=f"architecture of the backbone to read ({', '.join(ARCHS)}), replacing the config's "
                             "pipeline.vision (a ResNet keeps its small_image_stem, a ViT its img_size and "
                             "patch_size); without a config file the run starts from the package defaults and "
                             "needs the data as an override, e.g. data.name=FashionMNIST")
    parser.add_argument("--towers", default="exported", choices=TOWERS,
                        help="exported: the run's exports (its EMA teachers when it has them); student: the students, "
                             "read from the run's checkpoint.pth (reports go to eval_<name>_student.json)")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--num_workers", type=int, default=2)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--output_dir", default=None, help="where eval_<name>.json goes (default: beside the checkpoint)")
    parser.add_argument("--train_split", default="train")
    parser.add_argument("--test_split", default="val")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the training config (e.g. data.name=FashionMNIST)")
    return parser


def add_random_init_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--compare_random_init", action="store_true",
                        help="also evaluate the same architecture at random initialisation (a reference row)")


def add_text_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--text_pretrained",
        default=None,
        help=f"text tower: {TEXT_EXPORT_NAME} or a full checkpoint.pth (default: {TEXT_EXPORT_NAME} beside --pretrained)",
    )
    parser.add_argument("--text_batch_size", type=int, default=256, help="captions per text-encoder call")


def parse_ks(parser: argparse.ArgumentParser, text: str, flag: str = "--ks") -> list[int]:
    """'10,20,100' -> [10, 20, 100]; a parser error for anything else."""
    try:
        ks = [int(k) for k in text.split(",") if k.strip()]
    except ValueError:
        parser.error(f"{flag} {text!r}: expected comma-separated integers, e.g. 1,5,10")
    if not ks or min(ks) < 1:
        parser.error(f"{flag} {text!r}: expected integers >= 1")
    return ks


# ----------------------------------------------------------------------------------------------
# Config, process group, models
# ----------------------------------------------------------------------------------------------


def arch_vision_node(vision: Any, arch: str, img_size: int | None = None) -> dict[str, Any]:
    """The ``pipeline.vision`` node of ``--arch NAME`` given the config's node ``vision``.

    A ResNet (resnet18, resnet50): ``{name: NAME}``, keeping ``small_image_stem`` when ``vision``
    sets it. A ViT (vit_tiny ... vit_large): ``{name: vit, arch: NAME}`` keeping ``vision``'s
    ``img_size`` (else ``img_size``, the run's training crop size) and ``patch_size``. Every other
    key of ``vision`` is dropped: the architecture is the named one, not the config's variant.
    """
    old = dict(vision) if isinstance(vision, (dict, DictConfig)) else {}
    if arch in RESNET_ARCHS:
        return {"name": arch, **({"small_image_stem": bool(old["small_image_stem"])} if "small_image_stem" in old else {})}
    if arch in VIT_ARCHS:
        node: dict[str, Any] = {"name": "vit", "arch": arch}
        size = old.get("img_size", img_size)
        if size is not None:
            node["img_size"] = int(size)
        if old.get("patch_size") is not None:
            node["patch_size"] = int(old["patch_size"])
        return node
    raise ConfigError(f"--arch {arch!r}: choose one of {', '.join(ARCHS)}.")


def _arch_override(base: DictConfig, arch: str) -> str:
    """The ``pipeline.vision=...`` override that makes ``base``'s vision node the one of ``--arch``.

    An override naming another component replaces the node; one naming the same component merges
    into it, so the keys the new node leaves out are set back to the constructor's defaults."""
    old = base.pipeline.get("vision")
    old = dict(old) if isinstance(old, DictConfig) else {}
    node = arch_vision_node(old, arch, img_size=eval_image_size(base))
    if "name" in old and not renames(old["name"], node["name"]):
        defaults = constructor_defaults(MODELS.get(node["name"]))
        node.update({k: defaults.get(k) for k in old if k not in node})
    return "pipeline.vision=" + json.dumps(node)


def _names_data(overrides: Sequence[str]) -> bool:
    return any(split_override(item)[0].lstrip("+") in ("data", "data.name") for item in overrides)


def resolve_config(args: argparse.Namespace) -> DictConfig:
    """The run's config: ``--config``, else the ``config.yaml`` beside the checkpoint, else (with
    ``--arch`` only) the package defaults; then ``--arch``'s vision node, then the overrides."""
    arch = getattr(args, "arch", None)
    config: Path | None = Path(args.config) if args.config else Path(args.pretrained).resolve().parent / "config.yaml"
    if not config.is_file():
        if args.config or not arch:
            raise ConfigError(
                f"no config found at {config}: pass --config with the training config of {args.pretrained} "
                "(it gives the architecture and the data), or --arch NAME with the data as an override "
                "(e.g. --arch resnet50 data.name=FashionMNIST)."
            )
        if not _names_data(args.overrides):
            raise ConfigError(
                f"no config.yaml beside {args.pretrained} and no --config: --arch {arch} runs from the package "
                "defaults, which do not know the data of this checkpoint. Name it with an override, e.g. "
                "data.name=FashionMNIST (or data.name=Digits), and the image size with transform.global_size=224 "
                f"for a 224-px backbone (the defaults': {eval_image_size(load_config(None))})."
            )
        config = None
    if not arch:
        return load_config(config, args.overrides)
    # The overrides come after --arch's node, so that they can adjust it (pipeline.vision.small_image_stem=true).
    return load_config(config, [_arch_override(load_config(config), arch), *args.overrides])


def start(args: argparse.Namespace) -> tuple[DictConfig, DistInfo]:
    """The resolved config (torch seeded with its ``seed``) and this process's place in the job."""
    if not Path(args.pretrained).exists():  # before the config lookup, so the error names the checkpoint
        raise FileNotFoundError(f"checkpoint file not found: {args.pretrained} (check --pretrained).")
    cfg = resolve_config(args)
    torch.manual_seed(int(cfg.seed))
    return cfg, init_distributed(device=args.device)


def pretrained_backbone(cfg: DictConfig, args: argparse.Namespace) -> tuple[nn.Module, str]:
    """The ``--pretrained`` backbone (ViT or ResNet), strictly loaded, and a note of what was read."""
    return load_vision_backbone(args.pretrained, cfg.pipeline.vision, args.model_prefix, args.backbone_prefix,
                                towers=getattr(args, "towers", "exported"))


def random_init_backbone(cfg: DictConfig) -> nn.Module:
    """The same architecture at random initialisation, drawn from ``cfg.seed`` alone (so the
    reference row does not depend on what was loaded before it); the global RNG is untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(cfg.seed))
        return build_vision_backbone(cfg.pipeline.vision)


def backbones_to_evaluate(cfg: DictConfig, args: argparse.Namespace) -> tuple[list[tuple[str, nn.Module]], str]:
    """[("pretrained", model)] plus ("random init", model) with ``--compare_random_init``; and the source note."""
    model, source = pretrained_backbone(cfg, args)
    models = [(PRETRAINED, model)]
    if getattr(args, "compare_random_init", False):
        models.append((RANDOM_INIT, random_init_backbone(cfg)))
    return models, source


def text_tower_from_args(args: argparse.Namespace, vision_width: int | None = None) -> tuple[TextTower, str]:
    """The tower of ``--text_pretrained`` (default: the export beside ``--pretrained``) and its path."""
    towers = getattr(args, "towers", "exported")
    if towers == "student":  # the students of the run's checkpoint.pth, next to --pretrained
        path = Path(args.text_pretrained or args.pretrained)
        return load_text_tower(path, vision_width, towers=towers), str(path)
    if args.text_pretrained:
        path = Path(args.text_pretrained)
        if not path.exists():
            raise FileNotFoundError(f"text checkpoint not found: {path} (check --text_pretrained).")
    else:
        path = default_text_checkpoint(args.pretrained)
        if not path.exists():
            raise FileNotFoundError(
                f"no text checkpoint at {path}: the run of {args.pretrained} has no text tower (its method trains no "
                "text encoder, e.g. iBOT, MAE, DINO), and zero-shot and retrieval need one. Pass --text_pretrained "
                f"with the {TEXT_EXPORT_NAME} (or checkpoint.pth) of a run with text (CLIP, Harmony, ...)."
            )
    return load_text_tower(path, vision_width), str(path)


def start_with_text_tower(
    parser: argparse.ArgumentParser, args: argparse.Namespace
) -> tuple[DictConfig, DistInfo, nn.Module, str, TextTower, str]:
    """What zero-shot and retrieval share: the process group, the pre-trained backbone and the text
    tower on the evaluation device; returns (cfg, dist, backbone, its source, tower, its source)."""
    if args.text_batch_size < 1:
        parser.error("--text_batch_size must be >= 1")
    cfg, dist = start(args)
    model, source = pretrained_backbone(cfg, args)
    tower, text_source = text_tower_from_args(args, vision_width=int(model.embed_dim))
    return cfg, dist, model, source, tower.to(dist.device), text_source


# ----------------------------------------------------------------------------------------------
# Features and reports
# ----------------------------------------------------------------------------------------------


def features_for_split(
    model: nn.Module,
    cfg: DictConfig,
    split: str,
    args: argparse.Namespace,
    dist: DistInfo,
    forward: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, Tensor, Any]:
    """(N, D) float32 features and (N,) labels of one split, in dataset order, on every rank; and the dataset.

    ``forward`` maps images (B, 3, H, W) on ``dist.device`` to (B, D) features; the default is
    ``model(x)``: a ViT's CLS feature, a ResNet's global average pool. The model is moved to
    ``dist.device`` first.
    """
    dataset = build_eval_dataset(cfg, split)
    loader = build_eval_loader(dataset, args.batch_size, args.num_workers, rank=dist.rank, world_size=dist.world_size)
    model = model.to(dist.device)
    feats, labels = extract_features(forward or (lambda x: model(x)), loader, dist.device)
    return feats.float().cpu(), labels.cpu(), dataset


def feature_name(model: nn.Module) -> str:
    """What ``model(x)`` is, for reports: "CLS" (a ViT) or "avgpool" (a CNN's global average pool)."""
    return "CLS" if has_tokens(model) else "avgpool"


def num_classes_of(dataset: Any, labels: Tensor) -> int:
    """The dataset's class count (its class names), else the largest label + 1."""
    return len(getattr(dataset, "classnames", ()) or ()) or int(labels.max()) + 1


def output_path(args: argparse.Namespace, name: str) -> Path:
    folder = Path(args.output_dir) if args.output_dir else Path(args.pretrained).resolve().parent
    folder.mkdir(parents=True, exist_ok=True)
    suffix = "_student" if getattr(args, "towers", "exported") == "student" else ""
    return folder / f"eval_{name}{suffix}.json"


def write_report(args: argparse.Namespace, name: str, payload: dict[str, Any]) -> Path:
    """Write ``eval_<name>.json`` ({"metric": name, "towers": ..., **payload}; ``eval_<name>_student.json``
    with ``--towers student``) and say where (call on rank 0)."""
    path = output_path(args, name)
    arch = {"arch": args.arch} if getattr(args, "arch", None) else {}
    write_json(path, {"metric": name, "towers": getattr(args, "towers", "exported"), **arch, **payload})
    print(f"wrote {path}")
    return path


# ----------------------------------------------------------------------------------------------
# Running a command
# ----------------------------------------------------------------------------------------------


def run_eval(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> None:
    """Run an evaluation's ``main`` and exit. Bad input (config, paths, checkpoints) ends with a
    one-line error and exit code 2. On success every rank waits for rank 0's report before the
    process group closes; the group is closed either way."""
    try:
        code = main(argv)
        barrier()
    except INPUT_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        code = 2
    finally:
        cleanup_distributed()
    sys.exit(code or 0)


def eval_entry(main: Callable[[Sequence[str] | None], int | None]) -> Callable[[], None]:
    """A zero-argument ``[project.scripts]`` entry point that runs ``main`` through :func:`run_eval`."""

    def entry() -> None:
        run_eval(main)

    entry.__doc__ = main.__doc__
    return entry
