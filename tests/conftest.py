"""Fixtures shared by several test folders."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def one_thread():
    """Run a test on one intra-op thread (many tiny steps: more threads only add synchronisation
    cost on a busy CPU), restoring the count afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True, scope="session")
def _mask_cache_in_a_temporary_folder(tmp_path_factory):
    """HARL's mask cache (hirl_like.data.masks, ``$HIRL_LIKE_CACHE/masks``) in a temporary folder
    for the whole session, not the user's ~/.cache (subprocesses inherit it)."""
    import os

    before = os.environ.get("HIRL_LIKE_CACHE")
    os.environ["HIRL_LIKE_CACHE"] = str(tmp_path_factory.mktemp("hirl_like_cache"))
    yield
    if before is None:
        os.environ.pop("HIRL_LIKE_CACHE", None)
    else:
        os.environ["HIRL_LIKE_CACHE"] = before
