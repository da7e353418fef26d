"""Model names as paths under our output folders (logs, run folders, SLURM job folders)."""

from __future__ import annotations

from pathlib import Path


def safe_relpath(name: str) -> Path:
    """``zoo/bert`` -> ``zoo/bert``; ``..``, ``.`` and empty parts dropped, so a name never
    leads outside the folder it is joined to."""
    parts = [part for part in name.replace("\\", "/").split("/") if part not in ("", ".", "..")]
    return Path(*parts) if parts else Path("model")


def flat_name(name: str) -> str:
    """A model name as one folder name: run folders must not nest (``zoo`` vs ``zoo/bert``),
    or wiping one would wipe the other's live folder."""
    return str(safe_relpath(name)).replace("/", "__")
