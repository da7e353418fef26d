"""pytest-madengine: madengine's models.json workloads as pytest test items."""

__version__ = "0.1.0"
