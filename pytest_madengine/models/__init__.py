"""models.json: loading (load), validation (schema), tag selection (select), and the card's
``additional_docker_run_options`` (run_options).

A models file is parsed once, here, into frozen ``Model`` records. An entry that
fails validation does not stop the others: it becomes a ``BrokenEntry`` that the
collector turns into a failing test item, so the user sees every problem at once.

Compatibility notes (madengine 2.x, ``src/madengine/utils/discover_models.py``):

* Discovery: root ``models.json``; every ``scripts/<dir>/models.json`` (names become
  ``<dir>/<name>``, ``dockerfile`` and ``scripts`` are relative to ``scripts/<dir>/``);
  ``scripts/<dir>/get_models_json.py`` whose ``list_models()`` returns
  ``CustomModel`` objects (``to_dict()``, after ``update_model()``) or, here, plain dicts.
  A folder with both files is an error.
* Selection: a tag selects models whose full name equals it, whose tags contain it
  (tags a list or a comma string), or everything for ``all``; tags are ORed.
  ``name:k=v:k2`` adds ``--k v --k2`` to the model's args. ``scope/tag`` (one ``/``)
  looks only at models named ``scope/...`` and matches ``all``, a tag, or the name.
  A tag that selects nothing is an error.
"""

from __future__ import annotations

from pytest_madengine.models.load import (
    GENERATOR,
    MODELS_JSON,
    discover,
    load_generator_file,
    load_models_file,
    load_path,
)
from pytest_madengine.models.schema import SCRIPT_KINDS, BrokenEntry, LoadResult, Model, path_bounds
from pytest_madengine.models.select import TagSpec, key_of, parse_tags, select, spec_name

__all__ = [
    "GENERATOR",
    "MODELS_JSON",
    "SCRIPT_KINDS",
    "BrokenEntry",
    "LoadResult",
    "Model",
    "TagSpec",
    "discover",
    "key_of",
    "load_generator_file",
    "load_models_file",
    "load_path",
    "parse_tags",
    "path_bounds",
    "select",
    "spec_name",
]
