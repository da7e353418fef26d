import os
import sys

from madengine.utils.discover_models import CustomModel
from zoo_helpers import FLAVOURS

HERE = os.path.dirname(os.path.abspath(__file__))


def list_models():
    models = [
        CustomModel(name=f"beta_{flavour}", dockerfile="../../docker/zoo", scripts="bench.py",
                    n_gpus="0", tags=["zoo", "generated", "beta"], args="--flavour " + flavour)
        for flavour in FLAVOURS
    ]
    # A git submodule that may be missing in a checkout: fewer models, not a failure.
    submodule = os.path.join(HERE, "..", "Primus", "examples")
    if os.path.isdir(submodule):
        models.append(CustomModel(name="beta_primus", dockerfile="../../docker/zoo", scripts="bench.py"))
    else:
        print("warning: scripts/Primus is not checked out; skipping beta_primus", file=sys.stderr)
    return models
