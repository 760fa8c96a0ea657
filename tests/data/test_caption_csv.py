"""CsvCaptions on tiny real CSV/TSV files: open_clip's columns, separators, relative/absolute
paths, quoting, bad rows (never dropped), missing-path and column errors, loader."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from hirl_like.data.bad_samples import BAD_KEY, BadSample
from hirl_like.data.caption_csv import CsvCaptions
from hirl_like.data.loader import build_train_loader
from hirl_like.data.tokenizer import ClipTokenizer
from hirl_like.registry import DATASETS
from tests.data.test_bad_samples import (
    caption_sample,
    corrupt_bytes,
    digit_bytes,
    digit_caption,
    image_sample,
    truncated_jpeg,
)

GOOD = 20
TOKENIZER = ClipTokenizer(context_length=16)


def captioned(*args, **kwargs) -> CsvCaptions:
    """The file as a pipeline with a text tower reads it (a tokenizer: captions are required)."""
    return CsvCaptions(*args, tokenizer=TOKENIZER, **kwargs)


def write_table(path: Path, header: list[str], rows: list[list[str]], delimiter: str) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture
def data(tmp_path) -> dict:
    """images/ with 20 digits (one stored outside, referenced by absolute path) and broken files."""
    images = tmp_path / "images"
    images.mkdir()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    rows = []
    for k in range(GOOD):
        if k == 7:
            (outside / "7.png").write_bytes(digit_bytes(k))
            rows.append([str(outside / "7.png"), digit_caption(k)])
        else:
            (images / f"{k}.png").write_bytes(digit_bytes(k))
            rows.append([f"images/{k}.png", digit_caption(k)])
    (images / "corrupt.jpg").write_bytes(corrupt_bytes())
    (images / "truncated.jpg").write_bytes(truncated_jpeg())
    (images / "ok.png").write_bytes(digit_bytes(30))
    bad_rows = [
        ["images/corrupt.jpg", "corrupt"],
        ["images/truncated.jpg", "truncated"],
        ["images/absent.jpg", "missing file"],
        ["images/ok.png", "  "],  # empty caption
        ["", "no path"],
    ]
    bad_reasons = ["corrupt", "truncated", "missing_file", "empty_caption", "missing_file"]
    return {"dir": tmp_path, "rows": rows, "bad_rows": bad_rows, "bad_reasons": bad_reasons}


def check_dataset(ds: CsvCaptions, data: dict) -> None:
    assert len(ds) == GOOD + len(data["bad_rows"])
    for i in range(GOOD):
        s = ds[i]
        assert caption_sample(s["caption"]) == i and image_sample(s["image"]) == i  # row order, paired
        assert s["label"] == -1 and s["index"] == i
    bad = [ds[GOOD + j] for j in range(len(data["bad_rows"]))]
    assert all(isinstance(b, BadSample) for b in bad)
    assert [b.reason for b in bad] == data["bad_reasons"]
    assert bad[0].path == str(data["dir"] / "images/corrupt.jpg")
    assert bad[-1].path.endswith(f"row 26 (empty {ds.image_key!r})")  # header is row 1


def test_tsv_with_open_clip_defaults(data):
    path = write_table(data["dir"] / "train.tsv", ["filepath", "title"], data["rows"] + data["bad_rows"], "\t")
    ds = captioned(str(path))
    assert ds.separator == "\t" and DATASETS.get("CsvCaptions") is CsvCaptions
    check_dataset(ds, data)


def test_csv_with_custom_columns_quoting_and_extra_columns(data):
    rows = [[f"id{i}", caption, p] for i, (p, caption) in enumerate(data["rows"] + data["bad_rows"])]
    path = write_table(data["dir"] / "pairs.csv", ["id", "caption", "image"], rows, ",")
    ds = captioned(str(path), image_key="image", caption_key="caption")
    assert ds.separator == ","
    check_dataset(ds, data)
    # a caption holding the separator, quotes and a newline survives CSV quoting
    tricky = 'a "quoted", multi\nline caption'
    write_table(data["dir"] / "tricky.csv", ["filepath", "title"], [["images/1.png", tricky]], ",")
    assert captioned(str(data["dir"] / "tricky.csv"))[0]["caption"] == tricky


def test_image_root_and_explicit_separator(data, tmp_path):
    sub = tmp_path / "lists"
    sub.mkdir()
    rows = [[r[0].removeprefix("images/"), r[1]] for r in data["rows"][:5]]
    path = write_table(sub / "list.txt", ["filepath", "title"], rows, "|")
    with pytest.raises(ValueError, match="data.separator"):
        CsvCaptions(str(path))
    ds = CsvCaptions(str(path), separator="|", image_root=str(data["dir"] / "images"))
    assert [caption_sample(ds[i]["caption"]) for i in range(5)] == [0, 1, 2, 3, 4]
    assert image_sample(ds[2]["image"]) == 2
    with pytest.raises(FileNotFoundError, match="data.image_root"):
        CsvCaptions(str(path), separator="|", image_root=str(tmp_path / "nope"))


def test_short_rows_are_missing_captions_not_dropped(tmp_path):
    (tmp_path / "a.png").write_bytes(digit_bytes(0))
    (tmp_path / "t.csv").write_text("filepath,title\na.png,a zero\na.png\n\na.png,again\n")
    ds = captioned(str(tmp_path / "t.csv"))
    assert len(ds) == 3  # the blank line is not a row
    assert ds[0]["caption"] == "a zero" and ds[2]["caption"] == "again"
    assert isinstance(ds[1], BadSample) and ds[1].reason == "missing_caption" and "row 3" in ds[1].detail


def test_errors_name_the_path_and_key(tmp_path):
    missing = str(tmp_path / "absent.tsv")
    with pytest.raises(FileNotFoundError) as err:
        captioned(missing)
    assert missing in str(err.value) and "data.path" in str(err.value)
    (tmp_path / "cols.csv").write_text("path,text\nx.png,y\n")
    with pytest.raises(ValueError, match=r"column 'filepath' not in .*\['path', 'text'\].*data.image_key"):
        captioned(str(tmp_path / "cols.csv"))
    with pytest.raises(ValueError, match=r"column 'title' .*data.caption_key"):
        captioned(str(tmp_path / "cols.csv"), image_key="path")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValueError, match="header"):
        captioned(str(tmp_path / "empty.csv"))
    (tmp_path / "header_only.csv").write_text("filepath,title\n")
    with pytest.raises(ValueError, match="no rows"):
        captioned(str(tmp_path / "header_only.csv"))


def test_caption_noise_uses_other_rows(data):
    path = write_table(data["dir"] / "train.tsv", ["filepath", "title"], data["rows"], "\t")
    ds = CsvCaptions(str(path), caption_noise=0.3, seed=1)
    sources = [ds.caption_source(i) for i in range(GOOD)]
    for i, j in enumerate(sources):
        s = ds[i]
        assert image_sample(s["image"]) == i and caption_sample(s["caption"]) == j  # image kept, caption of j
    assert 1 <= sum(j != i for i, j in enumerate(sources)) <= 12


def test_loader_with_workers(data):
    path = write_table(data["dir"] / "train.tsv", ["filepath", "title"], data["rows"] + data["bad_rows"], "\t")
    ds = captioned(str(path))
    good, bad = [], []
    for batch in build_train_loader(ds, batch_size=5, num_workers=2, seed=0, epoch=2):
        good += batch["index"].tolist()
        bad += [b.index for b in batch.get(BAD_KEY, [])]
        for image, caption in zip(batch["image"], batch["caption"]):
            assert image_sample(image) == caption_sample(caption)
    assert sorted(good + bad) == list(range(25))  # 25 rows = 5 full batches: all used or counted
    assert sorted(bad) == list(range(20, 25))
