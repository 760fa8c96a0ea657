"""tools/check_data.py: one scan of a whole data set counts its bad samples by reason, for every
layout, on small data sets built here (a corrupt JPEG, a missing caption, a missing file, a shard
cut between samples, a shard cut inside a member); captions count only for a text pipeline; pipe:
URLs need --allow-pipe-urls."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from hirl_like.cli.check_data import main
from hirl_like.cli.common import run_cleanly
from hirl_like.data.pipe_urls import ALLOW_PIPE_URLS_ENV
from tests.data.test_bad_samples import corrupt_bytes, digit_bytes, digit_caption, truncated_jpeg

ROOT = Path(__file__).resolve().parents[2]
CLIP = str(ROOT / "configs/quickstart/clip_vit_tiny_digits.yaml")
DINO = str(ROOT / "configs/quickstart/dino_vit_tiny_digits.yaml")
FASHION = Path("/usr/share/datasets/fashion-mnist")
FAST = ["num_workers=0"]


@pytest.fixture(autouse=True)
def switch_off(monkeypatch):
    monkeypatch.delenv(ALLOW_PIPE_URLS_ENV, raising=False)


def check(capsys, *argv: str) -> tuple[int, str]:
    code = main([*argv, *FAST])
    return code, capsys.readouterr().out


def count_line(out: str, reason: str) -> int:
    lines = [ln for ln in out.splitlines() if ln.strip().startswith(f"{reason}: ")]
    return int(lines[0].split(":")[1].split()[0]) if lines else 0


def jpeg(k: int) -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(digit_bytes(k))).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture
def caption_folder(tmp_path) -> Path:
    root = tmp_path / "cc"
    (root / "00000").mkdir(parents=True)
    for k in range(10):
        (root / "00000" / f"{k:09d}.jpg").write_bytes(jpeg(k))
        if k != 4:  # sample 4: missing caption
            (root / "00000" / f"{k:09d}.txt").write_text(digit_caption(k))
    (root / "00000" / "000000007.jpg").write_bytes(corrupt_bytes())  # sample 7: corrupt
    (root / "00000" / "000000008.jpg").write_bytes(truncated_jpeg())  # sample 8: truncated
    return root


def test_a_caption_folder_for_a_text_pipeline(caption_folder, capsys):
    code, out = check(capsys, "-c", CLIP, "data.name=ImageCaptionFolder", f"data.root={caption_folder}")
    assert code == 1
    assert "read 10 samples" in out and "7 good, 3 bad" in out
    assert count_line(out, "missing_caption") == 1 and count_line(out, "corrupt") == 1 and count_line(out, "truncated") == 1
    assert "000000007.jpg (corrupt" in out  # the first bad paths are named
    assert "over the limit: training would stop" in out  # 3 > floor(0.01 * 10)


def test_a_vision_only_pipeline_needs_no_captions(caption_folder, capsys):
    code, out = check(capsys, "-c", DINO, "data.name=ImageCaptionFolder", f"data.root={caption_folder}", "data.max_bad_samples=5")
    assert code == 1 and "captions not needed" in out
    assert count_line(out, "missing_caption") == 0 and "8 good, 2 bad" in out


def test_a_clean_data_set_exits_0_with_workers(caption_folder, capsys):
    for k in (4, 7, 8):
        (caption_folder / "00000" / f"{k:09d}.jpg").write_bytes(jpeg(k))
        (caption_folder / "00000" / f"{k:09d}.txt").write_text(digit_caption(k))
    code = main(["-c", CLIP, "data.name=ImageCaptionFolder", f"data.root={caption_folder}", "--num_workers", "2"])
    out = capsys.readouterr().out
    assert code == 0 and "10 good, 0 bad" in out and "within the limit" in out


def test_csv_and_image_folder(tmp_path, capsys):
    (tmp_path / "a.jpg").write_bytes(jpeg(1))
    (tmp_path / "list.csv").write_text("filepath,title\na.jpg,one\nmissing.jpg,two\na.jpg,\n")
    code, out = check(capsys, "-c", CLIP, "data.name=CsvCaptions", f"data.path={tmp_path / 'list.csv'}")
    assert code == 1 and count_line(out, "missing_file") == 1 and count_line(out, "empty_caption") == 1
    classes = tmp_path / "classes"
    for name in ("cat", "dog"):
        (classes / name).mkdir(parents=True)
        (classes / name / "ok.png").write_bytes(digit_bytes(2))
    (classes / "dog" / "broken.png").write_bytes(b"")
    code, out = check(capsys, "-c", DINO, "data.name=ImageFolder", f"data.root={classes}")
    assert code == 1 and "read 3 samples" in out and count_line(out, "empty_file") == 1


def write_shards(folder: Path, sizes: list[int]) -> str:
    folder.mkdir()
    k = 0
    for s, size in enumerate(sizes):
        with wds.TarWriter(str(folder / f"{s:05d}.tar")) as writer:
            for _ in range(size):
                writer.write({"__key__": f"{k:06d}", "png": digit_bytes(k), "txt": digit_caption(k)})
                k += 1
    return str(folder / f"{{00000..{len(sizes) - 1:05d}}}.tar")


def member_offsets(path: Path) -> list[int]:
    import tarfile

    with tarfile.open(path) as tf:
        return [info.offset for info in tf]


def test_a_shard_cut_between_samples_is_counted(tmp_path, capsys):
    urls = write_shards(tmp_path / "shards", [4, 4, 4])
    cut = tmp_path / "shards" / "00001.tar"
    offsets = member_offsets(cut)
    cut.write_bytes(cut.read_bytes()[: offsets[4]])  # 2 whole samples (png + txt each), no end marker
    with pytest.warns(UserWarning, match="cut short"):  # counting the sizes (no sizes.json) warns too
        code, out = check(capsys, "-c", CLIP, "data.name=WebDatasetShards", f"data.urls={urls}")
    assert code == 1
    assert "read 10 samples" in out and "10 good, 0 bad" in out  # tarfile alone sees a shorter, valid shard
    assert "shards: 1 of 3 with problems" in out and "00001.tar: cut short" in out


def test_a_shard_cut_inside_a_member_with_a_sizes_file(tmp_path, capsys):
    urls = write_shards(tmp_path / "shards", [4, 4])
    (tmp_path / "shards" / "sizes.json").write_text(json.dumps({"00000.tar": 4, "00001.tar": 4}))
    cut = tmp_path / "shards" / "00000.tar"
    offsets = member_offsets(cut)
    cut.write_bytes(cut.read_bytes()[: offsets[5] + 700])  # inside sample 2's caption member
    code, out = check(capsys, "-c", CLIP, "data.name=WebDatasetShards", f"data.urls={urls}", "--num_workers", "2")
    assert code == 1 and "read 8 samples" in out
    assert count_line(out, "shard_error") == 2  # samples 2 and 3 of the cut shard
    assert "shards: 1 of 2 with problems" in out and "00000.tar: unreadable after 3 samples" in out


def test_pipe_urls_need_the_flag(tmp_path, capsys):
    urls = write_shards(tmp_path / "shards", [3])
    pipe = f"data.urls=pipe:cat {urls.replace('{00000..00000}', '00000')}"
    args = ["-c", CLIP, "data.name=WebDatasetShards", pipe, "data.num_samples=3", *FAST]
    with pytest.raises(SystemExit) as err:
        run_cleanly(main, args)
    assert err.value.code == 2
    message = capsys.readouterr().err
    assert message.count("\n") == 1 and "data.urls=" in message and "--allow-pipe-urls" in message
    assert main([*args, "--allow-pipe-urls"]) == 0
    assert "3 good, 0 bad" in capsys.readouterr().out


def test_digits_and_the_script(capsys):
    r = subprocess.run(
        [sys.executable, "tools/check_data.py", "-c", DINO, "num_workers=0"], cwd=ROOT, capture_output=True, text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "DigitsDataset: read 1437 samples" in r.stdout and "1437 good, 0 bad" in r.stdout


@pytest.mark.skipif(not FASHION.is_dir(), reason="apt-get install -y dataset-fashion-mnist")
def test_fashion_mnist(capsys):
    code, out = check(capsys, "-c", DINO, "data.name=FashionMNIST", f"data.root={FASHION}", "data.limit=200")
    assert code == 0 and "read 200 samples" in out


def test_16_bit_images_are_read_as_training_reads_them(tmp_path, capsys):
    classes = tmp_path / "scans" / "a"
    classes.mkdir(parents=True)
    Image.fromarray(np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (8, 1))).save(classes / "x.png")
    code, out = check(capsys, "-c", DINO, "data.name=ImageFolder", f"data.root={tmp_path / 'scans'}")
    assert code == 0 and "1 good, 0 bad" in out
