"""Image <-> text retrieval recall@1/5/10 on a captioned split (CLIP / COCO protocol).

    python3 launch.py --launch eval_common/eval_retrieval.py --pretrained OUT/main_vit_checkpoint.pth [--match class]

Each image of ``--test_split`` gets ``--captions_per_image`` captions from the dataset's caption
generator (caption c of image i is the generator's caption of i in "epoch" c: the template, and
hence the wording, is drawn per epoch; the named class follows the dataset's caption noise).
Image -> text: an image is a hit at k when any of its captions is among the k most similar
texts; text -> image: a caption is a hit when its image is among the k most similar images.
Ties count against the query. Captions built from class templates repeat across images of a
class, and identical captions tie, so image -> text recall is bounded by how many images share
a caption (the JSON records ``distinct_captions``); ``--match class`` scores category-level
recall instead (a retrieved item is correct when it has the query's class, the class a caption
names being the one its words say, after caption noise). Writes ``eval_retrieval.json`` beside the
checkpoint. Every rank extracts its shard of image embeddings; rank 0 encodes the captions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from hirl_like.cli.eval_shared import (
    add_text_arguments,
    eval_entry,
    eval_parser,
    features_for_split,
    parse_ks,
    run_eval,
    start_with_text_tower,
    write_report,
)
from hirl_like.evaluation.report import format_table
from hirl_like.evaluation.retrieval import class_retrieval_recall, retrieval_recall
from hirl_like.evaluation.text_tower import TextTower


def split_captions(dataset: Any, labels: Tensor, per_image: int) -> tuple[list[str], Tensor, Tensor]:
    """Captions image-major (text j describes image j // per_image), the (M,) text -> image map and
    the (M,) class each caption names (the image's class unless caption noise changed it)."""
    captioner = getattr(dataset, "captioner", None)
    if captioner is None:
        raise ValueError(f"{type(dataset).__name__} has no caption generator; retrieval needs a captioned split.")
    captions = [
        captioner.caption(i, int(label), epoch) for i, label in enumerate(labels.tolist()) for epoch in range(per_image)
    ]
    named = torch.tensor([captioner.noisy_label(i, int(label)) for i, label in enumerate(labels.tolist())])
    text_to_image = torch.arange(len(labels)).repeat_interleave(per_image)
    return captions, text_to_image, named.repeat_interleave(per_image)


@torch.no_grad()
def encode_captions(tower: TextTower, captions: list[str], batch_size: int) -> Tensor:
    """(M, E) text embeddings on the CPU, ``batch_size`` captions per text-encoder call."""
    chunks = [
        tower.encode_text(tower.tokenizer(captions[i : i + batch_size])).cpu()
        for i in range(0, len(captions), batch_size)
    ]
    return torch.cat(chunks)


def main(argv: Sequence[str] | None = None) -> int:
    parser = eval_parser(__doc__)
    add_text_arguments(parser)
    parser.add_argument("--captions_per_image", type=int, default=1, help="captions per image (several template draws)")
    parser.add_argument("--ks", default="1,5,10", help="comma-separated k of recall@k")
    parser.add_argument("--match", choices=("instance", "class"), default="instance",
                        help="instance: a caption matches its own image (COCO protocol); class: any item of the "
                             "query's class matches (for captions written from class templates)")
    args = parser.parse_args(argv)
    ks = parse_ks(parser, args.ks)
    if args.captions_per_image < 1:
        parser.error("--captions_per_image must be >= 1")
    cfg, dist, model, source, tower, text_source = start_with_text_tower(parser, args)
    image_x, labels, dataset = features_for_split(
        model, cfg, args.test_split, args, dist, forward=lambda x: tower.encode_image(model(x))
    )
    if dist.rank == 0:
        captions, text_to_image, caption_labels = split_captions(dataset, labels, args.captions_per_image)
        text_x = encode_captions(tower, captions, args.text_batch_size)
        if args.match == "class":
            scores = class_retrieval_recall(image_x, labels, text_x, caption_labels, ks=ks)
        else:
            scores = retrieval_recall(image_x, text_x, text_to_image, ks=ks)
        rows = [
            {"direction": "image->text", **{f"R@{k}": scores[f"i2t_r{k}"] for k in ks}},
            {"direction": "text->image", **{f"R@{k}": scores[f"t2i_r{k}"] for k in ks}},
        ]
        title = (f"{args.match}-level retrieval ({cfg.data.name} {args.test_split}, {len(labels)} images, {len(captions)} captions, "
                 f"{len(set(captions))} distinct)")
        print(format_table(rows, ["direction", *[f"R@{k}" for k in ks]], title=title))
        write_report(args, "retrieval", {
            "checkpoint": source,
            "text_checkpoint": text_source,
            "dataset": str(cfg.data.name),
            "test_split": args.test_split,
            "num_images": len(labels),
            "num_captions": len(captions),
            "distinct_captions": len(set(captions)),
            "captions_per_image": args.captions_per_image,
            "match": args.match,
            "caption_noise": float(getattr(dataset, "caption_noise", 0.0)),
            "templates": list(dataset.captioner.templates),
            "ks": ks,
            "results": scores,
        })
    return 0


entry = eval_entry(main)

if __name__ == "__main__":
    run_eval(main)
