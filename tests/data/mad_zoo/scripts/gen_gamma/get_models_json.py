import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from madengine.utils.discover_models import CustomModel  # noqa: E402
from zoo_common import DEFAULT_TAGS, host_devices  # noqa: E402


def list_models():
    models = [
        CustomModel(name=f"gamma_{len(host_devices(2))}dev", dockerfile="../../docker/zoo",
                    scripts="run.sh", tags=DEFAULT_TAGS + ["gamma"]),
    ]
    # A model whose code lives in another git repository (madengine clones `url`).
    url = os.environ.get("ZOO_GIT_URL")
    if url:
        models.append(CustomModel(name="gamma_url", dockerfile="../../docker/zoo", scripts="run.sh",
                                  url=url, tags=["zoo", "url_models"]))
    return models
