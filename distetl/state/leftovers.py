"""Temp files left under the output by killed local writes, and their removal.

A local commit writes a hidden ``.{basename}.{32 hex}.tmp`` beside its target, then
``os.replace``s it into place (:meth:`distetl.storage.Storage.write_atomic`). A process
killed in between leaves the temp file behind. The next run of the pipeline -- while it
holds the output's lease, so no live run of the pipeline can own such a file -- removes
those beside its own targets that are older than its start. Object stores have none:
a commit there is one complete PUT.
"""

from __future__ import annotations

import posixpath
import re
from typing import Iterable, Optional

from distetl.storage import Storage

__all__ = ["TEMP_NAME", "find_leftovers", "remove_leftovers"]

#: A distetl temp file: ``.{basename}.{uuid4 hex}.tmp``.
TEMP_NAME = re.compile(r"^\.(?P<base>.+)\.(?P<id>[0-9a-f]{32})\.tmp$")


def find_leftovers(files: Iterable[str], targets: Iterable[str]) -> list[str]:
    """The temp files among ``files`` that belong to one of ``targets``.

    Args:
        files: Paths from a listing (any files; only hidden ones can match).
        targets: The run's target paths, as the listing spells them.

    Returns:
        Sorted paths ``{dir}/.{basename}.{32 hex}.tmp`` whose ``{dir}/{basename}`` is a target.
    """
    owners: dict[str, list[str]] = {}  # the target each temp file would belong to
    for path in files:
        directory, name = posixpath.split(path)
        match = TEMP_NAME.match(name)
        if match:
            owners.setdefault(posixpath.join(directory, match["base"]), []).append(path)
    if not owners:
        return []
    # One pass over the targets (they may be rendered on demand: no set of them all).
    found = [temp for target in targets if target in owners for temp in owners[target]]
    return sorted(found)


def remove_leftovers(
    storage: Storage, targets: Iterable[str], before: float, files: Optional[Iterable[str]] = None,
    root: Optional[str] = None,
) -> int:
    """Remove the temp files of ``targets`` last modified before ``before``.

    Only local storage has such files (elsewhere this returns 0 without a request). Each
    candidate is stat'ed once; nothing else is.

    Args:
        storage: The output's storage.
        targets: The run's target paths.
        before: Seconds since the epoch (the run's start): newer files are kept.
        files: A listing already made (e.g. at plan time); if None, ``root`` is listed.
        root: The directory holding every target (listed when ``files`` is None).

    Returns:
        How many files were removed.
    """
    if not storage.is_local:
        return 0
    if files is None:
        if root is None:
            return 0
        files = storage.list_files(root)
    removed = 0
    for path in find_leftovers(files, targets):
        modified = storage.mtime(path)
        if modified is not None and modified < before and storage.delete(path):
            removed += 1
    return removed
