"""The ``local`` provider: a host folder mounted as it is (read-only unless ``readwrite``)."""

from __future__ import annotations

import os
from pathlib import Path

from pytest_madengine.data.config import Source
from pytest_madengine.data.plan import Fetch, Unusable, default_home


def plan(source: Source, index: int, root: Path) -> Fetch:
    path = Path(os.path.normpath(root / source.path))  # relative: to the checkout, as madengine's cwd
    if not path.exists():
        raise Unusable(f"{path} does not exist")
    return Fetch(source=source, host_dir=path, home=default_home(source, index), readonly=not source.readwrite)
