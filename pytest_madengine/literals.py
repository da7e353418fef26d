"""Reading a dict written as JSON or as a Python literal (madengine accepts both for the
additional context and the Dockerfile ``# CONTEXT`` header). Never evaluated as code."""

from __future__ import annotations

import ast
import json
from typing import Any


class LiteralError(ValueError):
    """Neither JSON nor a Python literal; ``str()`` says why, for both readings."""


def parse_dict_literal(text: str) -> dict[str, Any]:
    """JSON first, then ``ast.literal_eval``; the value must be a dict."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as json_err:
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as lit_err:
            detail = getattr(lit_err, "msg", None) or str(lit_err)
            raise LiteralError(f"not a JSON object or Python dict literal (JSON: {json_err.msg} at line "
                               f"{json_err.lineno}, column {json_err.colno}; Python literal: {detail})") from None
    if not isinstance(value, dict):
        raise LiteralError(f"must be a dict, got {type(value).__name__}")
    return value
