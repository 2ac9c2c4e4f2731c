"""Building instances: from labelled rasters (training targets), and from Mask R-CNN outputs (each tile's
:class:`Instance` list, and their semantic view).

Training targets come from the same labels as the semantic models: 4-connected components of the building
class are the instances, kept apart by the separator class (the line where touching buildings meet); each
instance then takes back the separator pixels within 1 px, so its mask covers the whole footprint. Components
under ``min_pixels`` are dropped (fragments cut by the crop border stay if large enough).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from .staging import Instance  # the record a tile's detections travel in (torch-free, for the driver's side)

__all__ = ["Instance", "instances_from_labels", "semantic_logits", "tile_instances"]

_FOUR = ndimage.generate_binary_structure(2, 1)


def instances_from_labels(labels: np.ndarray, building_class: int, separator_class: int | None,
                          min_pixels: int = 16) -> dict[str, torch.Tensor]:
    """torchvision detection target for one label crop (H, W): boxes (n, 4) x0 y0 x1 y1 in px (exclusive
    ends), labels (n,) all 1, masks (n, H, W) uint8."""
    building = labels == building_class
    ids, count = ndimage.label(building, structure=_FOUR)
    if separator_class is not None and count:
        separator = labels == separator_class
        grown = ndimage.grey_dilation(ids, footprint=_FOUR)
        ids = np.where(separator & (ids == 0), grown, ids)
    masks, boxes = [], []
    for index, found in enumerate(ndimage.find_objects(ids), start=1):
        if found is None:
            continue
        mask = ids == index
        if mask.sum() < min_pixels:
            continue
        rows, cols = found
        masks.append(mask)
        boxes.append([cols.start, rows.start, cols.stop, rows.stop])
    h, w = labels.shape
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.ones(len(boxes), dtype=torch.int64),
            "masks": torch.from_numpy(np.stack(masks).astype(np.uint8)) if masks else torch.zeros((0, h, w), dtype=torch.uint8)}


def semantic_logits(detections: list[dict], n_classes: int, building_class: int, shape: tuple[int, int],
                    score_threshold: float = 0.5) -> torch.Tensor:
    """(N, n_classes, H, W) log-probabilities from instances: P(building) = max over the instances scoring at
    least ``score_threshold`` of their mask probability (so a pixel is building where a kept instance's mask
    is, as in the instance raster), P(background, class 0) = the rest, any other class (the separator) ~0:
    instances keep touching buildings apart themselves."""
    eps = 1e-4
    out = []
    for d in detections:
        keep = d["scores"] >= score_threshold
        p = d["masks"][keep, 0].amax(0) if keep.any() else torch.zeros(shape)
        p = p.clamp(eps, 1 - eps)
        planes = [torch.full_like(p, eps) for _ in range(n_classes)]
        planes[0], planes[building_class] = 1 - p, p
        out.append(torch.stack(planes).log())
    return torch.stack(out)


def tile_instances(detection: dict, h: int, w: int, score_threshold: float) -> list[Instance]:
    """Instances of one tile (masks > 0.5, inside the unpadded h x w tile, cropped to their boxes)."""
    keep = detection["scores"] >= score_threshold
    masks = (detection["masks"][keep, 0, :h, :w] > 0.5).cpu().numpy()  # one copy for the tile, not one per mask
    out = []
    for binary, score in zip(masks, detection["scores"][keep].tolist()):
        rows, cols = np.nonzero(binary.any(1))[0], np.nonzero(binary.any(0))[0]
        if not len(rows):
            continue
        r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        out.append(Instance(int(r0), int(c0), binary[r0:r1, c0:c1], score))
    return out
