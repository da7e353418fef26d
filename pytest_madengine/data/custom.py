"""The ``custom`` provider: a script of the checkout run before the model, in the data folder."""

from __future__ import annotations

import os
from pathlib import Path

from pytest_madengine.data.config import Source
from pytest_madengine.data.plan import Fetch, Step, Unusable, data_folder, default_home

TIMEOUT_S = 1200.0  # madengine's


def plan(source: Source, index: int, root: Path, scratch: Path) -> Fetch:
    script = Path(os.path.normpath(root / source.path))
    if not script.is_relative_to(Path(os.path.normpath(root))):
        raise Unusable(f"script {source.path} is outside the checkout {root}")
    if not script.is_file():
        raise Unusable(f"script {script} does not exist")
    folder, transient = data_folder(source, scratch)
    step = Step(argv=("bash", str(script), *source.args), timeout=TIMEOUT_S, cwd=str(folder))
    return Fetch(source=source, host_dir=folder, home=default_home(source, index), readonly=False,
                 steps=(step,), env={"MAD_DATAHOME": str(folder), "MAD_DATANAME": source.dataname},
                 transient=transient, sized=True)
