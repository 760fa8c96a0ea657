"""CLIP zero-shot classification with prompt ensembling (Radford et al. 2021).

    python3 launch.py --launch eval_common/eval_zeroshot.py --pretrained OUT/main_vit_checkpoint.pth

Class embedding w_c = normalize(mean_t normalize(text(template_t(classname_c)))); image embedding
normalize(P_img @ CLS); prediction = cosine argmax; top-1 and top-5 (%) on ``--test_split``.
Class names and templates come from the dataset (its ``data.templates`` when the config sets
them, else the dataset's default templates); ``--imagenet_templates`` uses open_clip's 80
OpenAI ImageNet templates and 1000 ImageNet class names instead (for a 1000-class ImageNet
folder in the standard sorted-wnid order). The text tower is ``--text_pretrained`` (default
``main_text_checkpoint.pth`` beside ``--pretrained``). Writes ``eval_zeroshot.json`` beside the
checkpoint. Every rank extracts its shard of image embeddings; rank 0 scores them.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from typing import Any

from hirl_like.cli.eval_shared import (
    PRETRAINED,
    add_text_arguments,
    eval_entry,
    eval_parser,
    features_for_split,
    run_eval,
    start_with_text_tower,
    write_report,
)
from hirl_like.data.build import build_eval_dataset
from hirl_like.evaluation.report import format_table
from hirl_like.evaluation.zeroshot import Template, build_zeroshot_classifier, zeroshot_classify

IMAGENET_CLASSES = 1000
_WNID = re.compile(r"^n\d{8}$")


def class_prompts(dataset: Any, imagenet: bool, warn: bool = True) -> tuple[list[str], list[Template], str]:
    """(class names, templates, where they come from) for ``dataset``."""
    classnames = list(getattr(dataset, "classnames", ()) or ())
    if imagenet:
        if len(classnames) != IMAGENET_CLASSES:
            raise ValueError(
                f"--imagenet_templates needs a {IMAGENET_CLASSES}-class ImageNet dataset; "
                f"{type(dataset).__name__} has {len(classnames)} classes. Drop the flag to use the dataset's own."
            )
        from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES

        return list(IMAGENET_CLASSNAMES), list(OPENAI_IMAGENET_TEMPLATES), "open_clip OPENAI_IMAGENET_TEMPLATES + IMAGENET_CLASSNAMES"
    if not classnames:
        raise ValueError(f"{type(dataset).__name__} has no class names; zero-shot classification needs them.")
    if warn and len(classnames) == IMAGENET_CLASSES and all(_WNID.match(c) for c in classnames):
        print("warning: the class names are WordNet ids (n0...); pass --imagenet_templates for ImageNet's names "
              "and CLIP's templates.", file=sys.stderr)
    configured = getattr(dataset, "templates", None)
    if configured:
        return classnames, list(configured), "data.templates"
    return classnames, list(type(dataset).default_templates), f"{type(dataset).__name__}.default_templates"


def main(argv: Sequence[str] | None = None) -> int:
    parser = eval_parser(__doc__)
    add_text_arguments(parser)
    parser.add_argument("--imagenet_templates", action="store_true",
                        help="open_clip's OpenAI ImageNet templates and class names (1000-class datasets)")
    args = parser.parse_args(argv)
    cfg, dist, model, source, tower, text_source = start_with_text_tower(parser, args)
    # Prompts first: a class-name problem should stop the run before the image pass.
    classnames, templates, template_source = class_prompts(
        build_eval_dataset(cfg, args.test_split), args.imagenet_templates, warn=dist.rank == 0
    )
    feats, labels, _ = features_for_split(
        model, cfg, args.test_split, args, dist, forward=lambda x: tower.encode_image(model(x))
    )
    if dist.rank == 0:
        classifier = build_zeroshot_classifier(
            tower.encode_text, tower.tokenizer, classnames, templates, batch_size=args.text_batch_size
        )
        scores = zeroshot_classify(feats, labels, classifier)
        title = (f"zero-shot ({cfg.data.name} {args.test_split}, {len(labels)} images, {len(classnames)} classes, "
                 f"{len(templates)} templates)")
        print(format_table([{"model": PRETRAINED, **scores}], ["model", "top1", "top5"], title=title))
        write_report(args, "zeroshot", {
            "checkpoint": source,
            "text_checkpoint": text_source,
            "dataset": str(cfg.data.name),
            "test_split": args.test_split,
            "test_size": len(labels),
            "num_classes": len(classnames),
            "classnames": classnames,
            "templates_source": template_source,
            "templates": [t("{}") if callable(t) else t for t in templates],
            "logit_scale": tower.logit_scale,
            "results": scores,
        })
    return 0


entry = eval_entry(main)

if __name__ == "__main__":
    run_eval(main)
