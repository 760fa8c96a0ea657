"""No shell command from a config: pipe: shard URLs are refused (one line naming data.urls and the
flag) unless the process switch that only --allow-pipe-urls sets is on; other schemes unaffected."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import webdataset as wds

from hirl_like.data.bad_samples import BadSample
from hirl_like.data.pipe_urls import (
    ALLOW_PIPE_URLS_ENV,
    allow_pipe_urls,
    check_command_urls,
    pipe_urls_allowed,
    runs_a_command,
)
from hirl_like.data.webdataset_shards import WebDatasetShards
from hirl_like.registry import DATASETS
from tests.data.test_bad_samples import digit_bytes, digit_caption


@pytest.fixture(autouse=True)
def switch_off(monkeypatch):
    monkeypatch.delenv(ALLOW_PIPE_URLS_ENV, raising=False)  # restored after each test
    monkeypatch.delenv("GOPEN_REWRITE", raising=False)


@pytest.fixture
def shard(tmp_path) -> Path:
    path = tmp_path / "00000.tar"
    with wds.TarWriter(str(path)) as writer:
        for k in range(4):
            writer.write({"__key__": f"{k:06d}", "png": digit_bytes(k), "txt": digit_caption(k)})
    return path


def test_a_pipe_url_from_a_config_node_is_refused_before_running(tmp_path, shard):
    marker = tmp_path / "ran"
    url = f"pipe:touch {marker}; cat {shard}"
    with pytest.raises(ValueError) as err:
        DATASETS.build({"name": "WebDatasetShards", "urls": url, "num_samples": 4})
    message = str(err.value)
    assert "\n" not in message
    assert "data.urls=" in message and "pipe:" in message and "--allow-pipe-urls" in message
    assert not marker.exists()


@pytest.mark.parametrize(
    "urls",
    ["PIPE:cat x.tar", "{pipe:cat a.tar,b.tar}", ["b.tar", "pipe:cat a.tar"], "b.tar::pipe:cat a.tar"],
)
def test_every_spelling_of_a_pipe_url_is_refused(urls):
    with pytest.raises(ValueError, match="--allow-pipe-urls"):
        WebDatasetShards(urls, num_samples=4)


def test_a_url_rewritten_into_a_pipe_is_refused(monkeypatch):
    monkeypatch.setenv("GOPEN_REWRITE", "https://mirror/=pipe:cat ")
    assert runs_a_command("https://mirror/a.tar")
    with pytest.raises(ValueError, match="--allow-pipe-urls"):
        WebDatasetShards("https://mirror/{0..1}.tar", num_samples=4)


def test_remote_and_local_urls_stay_allowed(shard):
    assert not any(runs_a_command(u) for u in ["https://x/a.tar", "gs://b/a.tar", "file:///a.tar", "a/pipe:b.tar"])
    assert WebDatasetShards("https://example.com/{0..3}.tar", num_samples=8).counts == [2] * 4
    assert len(list(WebDatasetShards(str(shard)))) == 4


def test_the_switch_allows_pipe_urls(shard):
    assert not pipe_urls_allowed()
    allow_pipe_urls()
    assert pipe_urls_allowed()
    items = list(WebDatasetShards(f"pipe:cat {shard}", num_samples=4, shuffle_buffer=0))
    assert [x["index"] for x in items] == [0, 1, 2, 3]
    allow_pipe_urls(False)
    with pytest.raises(ValueError, match="--allow-pipe-urls"):
        check_command_urls([f"pipe:cat {shard}"])


def test_reading_refuses_a_pipe_url_that_appears_after_construction(shard):
    ds = WebDatasetShards(str(shard), shuffle_buffer=0)
    ds.urls = [f"pipe:cat {shard}"]  # e.g. patched by other code after the check
    items = list(ds)
    assert all(isinstance(x, BadSample) and x.reason == "shard_error" for x in items)
    assert "--allow-pipe-urls" in items[0].detail


@pytest.mark.slow
def test_train_refuses_pipe_urls_unless_its_flag_is_given(tmp_path, shard):
    """Needs ``--allow-pipe-urls`` on hirl_like/cli/train.py (it calls allow_pipe_urls())."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    marker = tmp_path / "ran"
    args = [
        sys.executable, "tools/train.py", "-c", "configs/quickstart/clip_vit_tiny_digits.yaml",
        f"output_dir={tmp_path / 'run'}", "data.name=WebDatasetShards", f"data.urls=pipe:touch {marker}; cat {shard}",
        "data.num_samples=4", "batch_size=2", "max_iterations=1", "num_workers=0", "progress_bar=false",
        "tensorboard=false", "pipeline.vision.depth=1", "pipeline.text.layers=1", "transform.size=16",
        "pipeline.vision.img_size=16",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != ALLOW_PIPE_URLS_ENV}
    refused = subprocess.run(args, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr[-2000:]
    assert "--allow-pipe-urls" in refused.stderr and not marker.exists()
    allowed = subprocess.run([*args, "--allow-pipe-urls"], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert allowed.returncode == 0, allowed.stderr[-2000:]
    assert marker.exists() and "done: 1 iterations" in allowed.stdout
