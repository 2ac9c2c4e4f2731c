"""YAML files validated with pydantic (training configs, pipeline jobs): one reader, one error format.

An error is one line naming the file and the field path, e.g.
``job.yaml: tiling.tile_px: Input should be greater than or equal to 64 (1 problem(s) in all)``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import GeosegError

M = TypeVar("M", bound=BaseModel)


class Strict(BaseModel):
    """A model that refuses unknown fields (a typo in a YAML file is an error, not a silent default)."""

    model_config = ConfigDict(extra="forbid")


def load_yaml(path: str | os.PathLike, model: type[M], what: str, edit: Callable[[dict], None] | None = None) -> M:
    """Read ``path`` as a YAML mapping, let ``edit`` change the raw fields (command-line overrides), validate."""
    path = Path(path)
    if not path.is_file():
        raise GeosegError(f"{path}: no such {what} file")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
        if not isinstance(raw, dict):
            raise GeosegError(f"{path}: a {what} file is a YAML mapping of fields")
        if edit is not None:
            edit(raw)
        return model.model_validate(raw)
    except yaml.YAMLError as err:
        raise GeosegError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        message = first["msg"].removeprefix("Value error, ")  # pydantic's prefix for a validator's ValueError
        raise GeosegError(f"{path}: {where}: {message} ({err.error_count()} problem(s) in all)") from None
