"""The kinds of labelled source a training config lists, one module each (:mod:`geoseg.sources.base` says what a
kind is: schema, loader, scoring regions, place rule). A config's ``sources:`` entry is one of :data:`Source` by
its ``kind``; an unknown kind is an error naming the choices. Adding a kind is one module here and one entry below.
"""

from __future__ import annotations

from typing import Annotated, Union

from pydantic import Field

from .base import SourceBase
from .chips import ChipsSource
from .dubai import DubaiSource
from .geotiff import GeotiffSource
from .image_mask import ImageMaskSource
from .negatives import NegativesSource
from .xyz import XYZSource

KINDS = (GeotiffSource, ChipsSource, DubaiSource, ImageMaskSource, XYZSource, NegativesSource)
Source = Annotated[Union[KINDS], Field(discriminator="kind")]

__all__ = ["KINDS", "Source", "SourceBase", "source_place"]


def source_place(src: SourceBase) -> str:
    """The place a source shows (:meth:`SourceBase.place_name`)."""
    return src.place_name()
