from madengine.utils.discover_models import CustomModel
from zoo_helpers import SIZES


class SizedModel(CustomModel):
    """A subclass filling fields in update_model(), as several MAD generators do."""

    def update_model(self):
        size = self.name.rsplit("_", 1)[-1]
        self.args = f"--size {size}"
        self.tags = self.tags + [f"size_{size}"]


def list_models():
    models = []
    for size in SIZES:
        models.append(
            SizedModel(
                name=f"alpha_{size}",
                dockerfile="../../docker/zoo",
                scripts="run.sh",
                n_gpus="-1",
                tags=["zoo", "generated", "alpha"],
                timeout=-1,
            )
        )
    return models
