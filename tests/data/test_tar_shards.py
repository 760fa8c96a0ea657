"""inspect_tar: a whole shard, one cut between samples (tarfile alone reads it as a valid shorter
archive), one cut inside a header, a gzip-compressed one; count_tar_samples warns for the cut ones."""

from __future__ import annotations

import gzip
import tarfile
from pathlib import Path

import pytest
import webdataset as wds

from hirl_like.data.tar_shards import count_tar_samples, inspect_tar


@pytest.fixture
def shard(tmp_path) -> Path:
    path = tmp_path / "00000.tar"
    with wds.TarWriter(str(path)) as writer:
        for k in range(5):
            writer.write({"__key__": f"{k:03d}", "txt": f"caption {k}", "png": bytes([k]) * 900})
    return path


def offsets(path: Path) -> list[int]:
    with tarfile.open(path) as tf:
        return [info.offset for info in tf]


def test_a_whole_shard(shard):
    assert inspect_tar(str(shard)) == type(inspect_tar(str(shard)))(str(shard), 5, True, "")
    assert count_tar_samples(str(shard)) == 5


def test_a_shard_cut_between_samples(shard, tmp_path):
    cut = tmp_path / "cut.tar"
    cut.write_bytes(shard.read_bytes()[: offsets(shard)[6]])  # 3 whole samples (2 members each)
    with tarfile.open(cut) as tf:
        assert len(tf.getmembers()) == 6  # tarfile reads it without complaint
    report = inspect_tar(str(cut))
    assert (report.samples, report.complete) == (3, False) and "ends right after a member" in report.problem
    with pytest.warns(UserWarning, match="cut short: unreadable after 3 samples"):
        assert count_tar_samples(str(cut)) == 3


def test_a_shard_cut_inside_a_header(shard, tmp_path):
    cut = tmp_path / "cut.tar"
    cut.write_bytes(shard.read_bytes()[: offsets(shard)[4] + 100])
    report = inspect_tar(str(cut))
    assert not report.complete and report.samples == 2 and "inside a member header" in report.problem


def test_a_compressed_shard(shard, tmp_path):
    whole = tmp_path / "whole.tar.gz"
    whole.write_bytes(gzip.compress(shard.read_bytes()))
    assert inspect_tar(str(whole)).complete and inspect_tar(str(whole)).samples == 5
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(gzip.compress(shard.read_bytes()[: offsets(shard)[6]]))
    assert not inspect_tar(str(cut)).complete


def test_an_unreadable_file(tmp_path):
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar at all" * 10)
    report = inspect_tar(str(junk))
    assert report.samples == 0 and not report.complete and "unreadable after 0 samples" in report.problem
