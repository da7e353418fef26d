"""A generator whose Dockerfile lives in its own folder (``docker/local`` is relative to
``scripts/gen_local/``), one plain CustomModel and one from a subclass that fills every field
but name and tags in update_model()."""

from madengine.utils.discover_models import CustomModel

plain = CustomModel(
    name="third",
    dockerfile="docker/local",
    scripts="run.sh",
    n_gpus="-1",
    owner="zoo@example.com",
    tags=["madfix", "madfix_group_c", "madfix_docker"],
    multiple_results="",
)


class Filled(CustomModel):
    def update_model(self):
        self.dockerfile = "docker/local"
        self.scripts = "run.sh"
        self.n_gpus = "-1"
        self.owner = "zoo@example.com"
        self.args = ""
        self.multiple_results = ""


def list_models():
    return [plain, Filled(name="fourth", tags=["madfix", "madfix_group_c"])]
