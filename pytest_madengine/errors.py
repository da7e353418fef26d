"""One error hierarchy; every message is written for the user, not for us.

A message names the file, the entry and the field it is about, so it can be
acted on without reading a traceback.
"""

from __future__ import annotations


class MadError(Exception):
    """Base of every error pytest-madengine raises on purpose."""


class UsageError(MadError):
    """Bad command-line options or context: the run cannot start."""


class ModelsFileError(MadError):
    """A models file (models.json, get_models_json.py) cannot be read at all."""


class ContextError(UsageError):
    """The additional context (--mad-context, --mad-context-file) is malformed."""


class SelectionError(UsageError):
    """A --mad-tags tag selects nothing."""


class MetricsError(MadError):
    """A model's output or results CSV cannot be turned into metrics."""


class ExecutorError(MadError):
    """Starting or running a model failed for a reason outside the model."""


class DockerfileError(ExecutorError):
    """No Dockerfile, or several, match the run context."""


class MadWarning(UserWarning):
    """Something in the context or a models file that runs, but not as the user may think
    (an unknown key, a key without effect here, a Dockerfile passed over). A pytest warning,
    so it shows in the warnings summary in every mode (``-q`` included) and ``-W error::``
    can make it fatal."""
