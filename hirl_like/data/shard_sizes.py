"""How many samples each shard holds, for the epoch plan: from ``sizes.json``, a declared
``data.num_samples``, or by counting the tar headers once (then written to ``sizes.json``).

Order: ``sizes.json`` (``{"00000.tar": 10000, ...}``, open_clip's convention) beside the shards or
at ``data.sizes_file``, when it lists every shard; else a declared ``num_samples``, shards then
assumed equal (as img2dataset writes them apart from the last); else the local shards are counted
(:func:`~hirl_like.data.tar_shards.count_tar_samples`) and the file is written. The file is never
refreshed: delete it after changing the shards.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

from hirl_like.data import tar_shards
from hirl_like.data.shard_urls import is_local, local_path


def sizes_file_for(urls: Sequence[str], sizes_file: str | None) -> str | None:
    """The sizes file: ``sizes_file`` when given, else ``sizes.json`` beside the first shard (local shards only)."""
    if sizes_file is not None:
        return sizes_file
    if all(is_local(u) for u in urls):
        return os.path.join(os.path.dirname(os.path.abspath(local_path(urls[0]))), tar_shards.SIZES_FILE)
    return None


def size_key(url: str, sizes_path: str | None) -> str:
    """A shard's name in the sizes file: its path relative to that file's folder (the bare file
    name for shards beside it, as open_clip writes them), else its URL's last part."""
    if sizes_path is not None and is_local(url):
        return os.path.relpath(os.path.abspath(local_path(url)), os.path.dirname(os.path.abspath(sizes_path)))
    return os.path.basename(url)


def shard_sizes(urls: Sequence[str], num_samples: int | None, sizes_file: str | None) -> tuple[list[int], bool]:
    """(samples per shard in ``urls`` order, whether they are exact rather than assumed)."""
    path = sizes_file_for(urls, sizes_file)
    known = tar_shards.read_sizes(path) if path and os.path.isfile(path) else {}
    names = [size_key(u, path) for u in urls]
    if all(n in known for n in names):
        counts = [known[n] for n in names]
        if num_samples is not None and num_samples != sum(counts):
            raise ValueError(
                f"data.num_samples={num_samples} but {path} lists {sum(counts)} samples in these shards; "
                "fix one of them (or set num_samples: null to use the file)"
            )
        return counts, True
    if num_samples is not None:  # declared: assume equal shards
        if num_samples < len(urls):
            raise ValueError(f"data.num_samples={num_samples} is fewer than the {len(urls)} shards")
        base, extra = divmod(num_samples, len(urls))
        return [base + (1 if i < extra else 0) for i in range(len(urls))], False
    remote = [u for u in urls if not is_local(u)]
    if remote:
        raise ValueError(
            f"cannot count samples in remote shards ({remote[0]!r}, ...); declare data.num_samples or give "
            f"data.sizes_file (a JSON {{shard file name: sample count}})"
        )
    for url, name in zip(urls, names):
        if name not in known:
            known[name] = tar_shards.count_tar_samples(local_path(url))
    if path is not None and not tar_shards.write_sizes(path, known):
        warnings.warn(f"could not write shard sizes to {path}; they will be counted again next time", stacklevel=3)
    return [known[n] for n in names], True
