"""``geoseg calibrate``: fit a BGS-Net gate (:mod:`geoseg.gate`) to a model from labelled tiles, no retraining.

Calibration data are training configs (``--data``, the YAML files of ``geoseg train``); their scenes are read
at the *model's* GSD and cut into ``tile_px`` tiles (no overlap; the last tile of a row/column moved back as in
``geoseg run``); tiles less than half labelled are left out. Each tile goes through the encoder once and yields:

* its bottleneck channel means (eq. 5), the gate's input;
* its building fraction (the config's building class plus its separator class, over labelled pixels): a tile is
  a *target* when the fraction is at least ``target_fraction`` (0.5 % as in the paper);
* its class fractions, named by the config's classes, to find which non-target classes make stage-1 false
  alarms (the Dubai land-cover labels: land, road, vegetation, water);
* a sample of bottleneck cells with the class fractions of the pixels under each (only from configs whose
  classes are the model's own), to fit the linear probe that gives skipped tiles a coarse prediction.

Several configs can be combined: the building model is calibrated on its own training tiles *and* the Dubai
tiles, which bring the sparse-building, many-confounder setting of the paper.

A SegBlocks model has no gate; :func:`calibrate_policy` instead sets the P(high resolution) threshold that
reaches each fraction ``tau`` of full-resolution blocks over the same training tiles, and writes the table into
the model card (``policy_thresholds``), so that ``--tau`` keeps the policy's per-tile adaptivity.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .atomic import atomic_path
from .card import resolve_model_path
from .datasets import IGNORE, LabelledScene
from .errors import GeosegError
from .gate import (Gate, calibrate_rules, fit_linear_head, gate_open, gate_path, pregate_path, rates,
                   recall_threshold)
from .pregate import CELL_PX, PREGATE_RECALL, THUMB_FACTOR, PreGate, score_thumbnails, thumbnails, train_thumbnet
from .model import GeoModel, SegBlocksModel, load_model
from .tile import tile_grid
from .config import TrainConfig, load_config, load_scenes

_CELLS_PER_TILE = 48
_BATCH_TILES = 8


@dataclass
class TileSet:
    """Calibration tiles in arrays: one row per tile."""

    means: list[np.ndarray] = field(default_factory=list)  # (C,) bottleneck channel means
    building_fraction: list[float] = field(default_factory=list)
    composition: list[dict[str, float]] = field(default_factory=list)  # class name -> fraction of labelled pixels
    source: list[str] = field(default_factory=list)
    place: list[str] = field(default_factory=list)  # the place of the tile's scene (its group in worst-group calibration)
    cell_features: list[np.ndarray] = field(default_factory=list)  # (n, C) bottleneck cells, own-class configs only
    cell_targets: list[np.ndarray] = field(default_factory=list)  # (n, classes) class fractions under each cell

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return np.stack(self.means).astype(np.float64), np.asarray(self.building_fraction)


def scene_tiles(scene: LabelledScene, tile_px: int, overlap_px: int = 0):
    """(pixels, labels) tiles of ``tile_px`` covering a scene, ``overlap_px`` apart as ``geoseg run`` cuts them
    (the last tile of a row/column moved back); a scene smaller than a tile is one tile. Tiles less than half
    labelled are left out."""
    h, w = scene.labels.shape
    for t in tile_grid(h, w, tile_px, overlap_px):
        labels = scene.labels[t.row_off : t.row_end, t.col_off : t.col_end]
        if (labels != IGNORE).mean() >= 0.5:
            yield scene.pixels[:, t.row_off : t.row_end, t.col_off : t.col_end], labels


def label_blocks(labels: np.ndarray, cells: tuple[int, int], step: tuple[int, int]) -> np.ndarray:
    """A label tile cut into ``cells`` (rows, columns) blocks of ``step`` (h, w) px, row-major: (blocks, px per
    block), padded with IGNORE at the bottom/right to cover them all."""
    h, w = labels.shape
    (ch, cw), (step_h, step_w) = cells, step
    padded = np.full((ch * step_h, cw * step_w), IGNORE, np.uint8)
    padded[:h, :w] = labels
    return padded.reshape(ch, step_h, cw, step_w).transpose(0, 2, 1, 3).reshape(ch * cw, -1)


def cell_fractions(labels: np.ndarray, cells: tuple[int, int], n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Class fractions of the labelled pixels under each bottleneck cell: (cells_h*cells_w, n_classes), and
    which cells are at least half labelled. The label tile is padded with IGNORE to a whole number of cells."""
    h, w = labels.shape
    blocks = label_blocks(labels, cells, (-(-h // cells[0]), -(-w // cells[1])))
    counts = np.stack([(blocks == k).sum(1) for k in range(n_classes)], axis=1).astype(np.float32)
    known = counts.sum(1)
    return counts / np.maximum(known, 1)[:, None], known >= 0.5 * blocks.shape[1]


#: a pre-gate cell is "building" in training when at least this share of its labelled pixels is building
CELL_BUILDING_FRACTION = 0.02


def building_cells(labels: np.ndarray, building: list[int]) -> np.ndarray:
    """The pre-gate's training map of a label tile, one value per cell of :data:`geoseg.pregate.CELL_PX` px
    (ceil(h / CELL_PX), ceil(w / CELL_PX)), uint8: 1 where the cell's labelled pixels are at least
    :data:`CELL_BUILDING_FRACTION` building, 0 where less, IGNORE where under half of it is labelled."""
    h, w = labels.shape
    cells = (-(-h // CELL_PX), -(-w // CELL_PX))
    blocks = label_blocks(labels, cells, (CELL_PX, CELL_PX))
    known = (blocks != IGNORE).sum(1)
    built = np.isin(blocks, building).sum(1)
    out = (built >= CELL_BUILDING_FRACTION * np.maximum(known, 1)).astype(np.uint8)
    out[known < blocks.shape[1] / 2] = IGNORE
    return out.reshape(cells)


def tile_batches(net: GeoModel, configs: list[tuple[TrainConfig, Path]], split: str, tile_px: int, progress=None,
                 overlap_px: int = 0):
    """(config, scene, prepared input (n, C, H, W), label tiles) for every batch of at most ``_BATCH_TILES``
    calibration tiles of the configs' ``split`` scenes, read at the model's GSD."""
    found = False
    for config, root in configs:
        config = config.model_copy(update={"gsd_m": net.card.gsd_m})
        for scene in load_scenes(config, root, split):
            tiles = list(scene_tiles(scene, tile_px, overlap_px))  # all of one size: the grid moves the last tile back
            for start in range(0, len(tiles), _BATCH_TILES):
                batch = tiles[start : start + _BATCH_TILES]
                found = True
                yield config, scene, net.prepare(torch.from_numpy(np.stack([p for p, _ in batch]))), [l for _, l in batch]
                if progress is not None:
                    progress.update(len(batch))
    if not found:
        raise GeosegError(f"no calibration tiles: the configs have no {split!r} scenes at least half labelled")


@torch.inference_mode()
def collect(net: GeoModel, configs: list[tuple[TrainConfig, Path]], split: str, tile_px: int,
            autocast: bool, rng: np.random.Generator, progress=None, overlap_px: int = 0) -> TileSet:
    """Encode every calibration tile of the configs' ``split`` scenes (see the module docstring)."""
    out = TileSet()
    for config, scene, x, labels in tile_batches(net, configs, split, tile_px, progress, overlap_px):
        own_classes = config.classes == net.card.classes
        building = config.building_classes
        named = [c for i, c in enumerate(config.classes) if i not in building]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            bottlenecks = net.encode(x)[-1].float()
        for bottleneck, tile_labels in zip(bottlenecks, labels):
            _add_tile(out, bottleneck, tile_labels, config, building, named, own_classes, scene.name, rng)
            out.place.append(scene.place)
    return out


def _add_tile(out: TileSet, bottleneck: torch.Tensor, labels: np.ndarray, config: TrainConfig, building: list[int],
              named: list[str], own_classes: bool, source: str, rng: np.random.Generator) -> None:
    """Record one encoded tile: channel means, building fraction, class composition, sampled probe cells."""
    known = labels[labels != IGNORE]
    counts = np.bincount(known, minlength=len(config.classes))
    out.means.append(bottleneck.mean((1, 2)).numpy())
    out.building_fraction.append(float(counts[building].sum() / known.size))
    out.composition.append({c: float(counts[config.classes.index(c)] / known.size) for c in named})
    out.source.append(source)
    if own_classes:
        fractions, usable = cell_fractions(labels, tuple(bottleneck.shape[1:]), len(config.classes))
        features = bottleneck.reshape(bottleneck.shape[0], -1).T.numpy()
        pick = np.flatnonzero(usable)
        pick = rng.choice(pick, size=min(len(pick), _CELLS_PER_TILE), replace=False)
        out.cell_features.append(features[pick].astype(np.float16))
        out.cell_targets.append(fractions[pick])


def tile_groups(tiles: TileSet, group_by: str) -> np.ndarray:
    """Each tile's group for worst-group calibration: its scene's ``place`` (banepa, dubai, neon_plots...) or its
    ``folder`` ("dubai/tile_1/image_part_002" -> "dubai/tile_1"; the scene itself for "banepa:train")."""
    if group_by == "place":
        return np.array(tiles.place)
    if group_by == "folder":
        return np.array([name.rsplit("/", 1)[0] for name in tiles.source])
    raise GeosegError(f"--group-by {group_by!r}: use place or folder")


def false_alarms_by_group(groups: np.ndarray, opened: np.ndarray, target: np.ndarray) -> dict:
    """Per group (place): its tiles without buildings, how many a gate opens, and that rate -- which real
    negatives (forest plots, desert, water...) still open the decoder."""
    report = {}
    for g in np.unique(groups):
        rows = (groups == g) & ~target
        if rows.any():
            report[str(g)] = {"non_target_tiles": int(rows.sum()), "false_alarms": int((opened & rows).sum()),
                              "false_alarm_rate": round(float(opened[rows].mean()), 4)}
    return report


def fit_probe(features: np.ndarray, targets: np.ndarray, steps: int = 400, weight_decay: float = 1e-4,
              seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Softmax regression (a 1x1 conv on the bottleneck) to the class fractions under each cell.
    Returns (weight (classes, C), bias (classes,))."""
    torch.manual_seed(seed)
    x = torch.from_numpy(np.asarray(features, np.float32))
    y = torch.from_numpy(np.asarray(targets, np.float32))
    linear = torch.nn.Linear(x.shape[1], y.shape[1])
    optimiser = torch.optim.Adam(linear.parameters(), lr=0.01, weight_decay=weight_decay)
    for _ in range(steps):
        loss = -(y * torch.log_softmax(linear(x), 1)).sum(1).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return linear.weight.detach().numpy(), linear.bias.detach().numpy()


def confounders(tiles: TileSet, opened: np.ndarray, target: np.ndarray) -> dict:
    """Which non-target classes the stage-1 false alarms are made of: for each class name, how many false-alarm
    tiles it dominates, its mean share in them, and the stage-1 false-alarm rate of tiles it dominates."""
    named = [i for i, c in enumerate(tiles.composition) if c]
    if not named:
        return {}
    dominant = {}
    for i in named:
        comp = tiles.composition[i]
        dominant[i] = max(comp, key=comp.get)
    report = {}
    for name in sorted(set(dominant.values())):
        rows = [i for i, d in dominant.items() if d == name and not target[i]]
        alarms = [i for i in rows if opened[i]]
        report[name] = {"non_target_tiles": len(rows), "false_alarms": len(alarms),
                        "false_alarm_rate": round(len(alarms) / max(len(rows), 1), 4),
                        "mean_share_in_false_alarms": round(float(np.mean([tiles.composition[i][name] for i in alarms])), 4) if alarms else 0.0}
    return report


def plot_channels(means: np.ndarray, target: np.ndarray, gate: Gate, path: Path) -> None:
    """Histograms of the chosen channels' tile means with the thresholds: stage 1 over all tiles (building vs no
    building), stage 2 over the tiles stage 1 opens (building vs false alarm)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rules = [("stage 1", r) for r in gate.stage1] + [("stage 2", r) for r in gate.stage2]
    cols = 4
    rows = -(-len(rules) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    for ax in axes.ravel()[len(rules):]:
        ax.axis("off")
    first = gate_open(gate.stage1, [], means)
    for ax, (stage, rule) in zip(axes.ravel(), rules):
        rows = first if stage == "stage 2" else np.ones(len(means), bool)
        x = means[rows, rule.channel]
        bins = np.linspace(x.min(), x.max(), 40)
        ax.hist(x[~target[rows]], bins=bins, alpha=0.6, density=True,
                label="no building (stage 2: false alarm)")
        ax.hist(x[target[rows]], bins=bins, alpha=0.6, density=True, label="building")
        ax.axvline(rule.threshold, color="k", lw=1)
        ax.set_title(f"{stage}: ch {rule.channel} {'>' if rule.higher else '<'} {rule.threshold:.3g}", fontsize=8)
        ax.tick_params(labelsize=6)
    axes.ravel()[0].legend(fontsize=6)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)


def calibrate(model_path: str, data: list[str], out: str | None = None, split: str = "train", tile_px: int = 512,
              target_fraction: float = 0.005, k1: int = 10, k2: int = 3, target_recall: float | None = None,
              per_group: bool = False, min_group_tiles: int = 10, group_by: str = "place", autocast: bool = False,
              seed: int = 0, progress=None, rule: str = "paper") -> tuple[Gate, Path]:
    """Calibrate, write the gate JSON (beside the model unless ``out``) and its PNG; returns (gate, path).
    ``per_group``: the recall target holds in every group (:func:`tile_groups`) with at least
    ``min_group_tiles`` building tiles, and the learned head is fitted too (its threshold from out-of-fold
    logits, :func:`geoseg.gate.fit_linear_head`); ``rule``: which rule the file opens tiles by."""
    net, sha256 = load_model(model_path)
    configs = [load_config(p) for p in data]
    rng = np.random.default_rng(seed)
    tiles = collect(net, configs, split, tile_px, autocast, rng, progress)
    means, fraction = tiles.arrays()
    target = fraction >= target_fraction
    places, groups = np.array(tiles.place), tile_groups(tiles, group_by)
    stage1, stage2, report = calibrate_rules(means, target, k1, k2, target_recall, groups if per_group else None,
                                             min_group_targets=min_group_tiles)
    weight = bias = None
    card = net.card
    other_classes = [i for i in range(len(card.classes)) if i not in (card.building_class, card.separator_class)]
    if tiles.cell_features and len(other_classes) > 1:  # one other class (background) needs no probe
        w, b = fit_probe(np.concatenate(tiles.cell_features), np.concatenate(tiles.cell_targets), seed=seed)
        weight, bias = w.round(6).tolist(), b.round(6).tolist()
    if per_group:
        head, report["linear"] = fit_linear_head(means, target, groups, np.array(tiles.source), target_recall or 0.95,
                                                 min_group_targets=min_group_tiles)
    report["confounders_of_stage1"] = confounders(tiles, gate_open(stage1, [], means), target)
    report["false_alarms_by_place"] = false_alarms_by_group(places, gate_open(stage1, stage2, means), target)
    report["building_tiles_by_place"] = {str(g): int((target & (places == g)).sum()) for g in np.unique(places)}
    report.update({"data": list(data), "split": split, "tile_px": tile_px, "target_fraction": target_fraction,
                   "k1": k1, "k2": k2, "min_group_tiles": min_group_tiles if per_group else None,
                   "group_by": group_by if per_group else None, "sources": sorted(set(tiles.source))[:50]})
    gate = Gate(sha256, int(means.shape[1]), stage1, stage2, weight, bias, report, head if per_group else None)
    gate = gate.with_rule(rule)
    path = Path(out) if out else gate_path(resolve_model_path(model_path))
    gate.calibration["ops_per_tile"] = gate.ops_per_tile((tile_px // 32) ** 2)
    gate.to_json(path)
    plot_channels(means, target, gate, path.with_suffix(".png"))
    return gate, path


@dataclass
class Thumbnails:
    """Pre-gate tiles in arrays: one row per tile (thumbnails of the prepared input, float16)."""

    thumbs: list[torch.Tensor]
    cells: list[np.ndarray]  # building_cells of each tile
    building_fraction: np.ndarray
    place: np.ndarray
    scene: np.ndarray


def collect_thumbnails(net: GeoModel, configs: list[tuple[TrainConfig, Path]], split: str, tile_px: int,
                       overlap_px: int = 0, factor: int = THUMB_FACTOR, progress=None) -> Thumbnails:
    """Thumbnails of the configs' ``split`` tiles (as :func:`collect` cuts them; no encoder), where their
    buildings are (cell targets), their building fractions, places and scene names."""
    thumbs, cells, fraction, place, scene_names = [], [], [], [], []
    for config, scene, x, labels in tile_batches(net, configs, split, tile_px, progress, overlap_px):
        building = config.building_classes
        for t, tile_labels in zip(thumbnails(x, factor).to(torch.float16), labels):
            known = tile_labels[tile_labels != IGNORE]
            thumbs.append(t)
            cells.append(building_cells(tile_labels, building))
            fraction.append(float(np.isin(known, building).mean()))
            place.append(scene.place)
            scene_names.append(scene.name)
    return Thumbnails(thumbs, cells, np.asarray(fraction), np.asarray(place), np.asarray(scene_names))


def held_scenes(places: np.ndarray, scenes: np.ndarray, every: int = 4) -> np.ndarray:
    """bool (N,): tiles kept out of the pre-gate's training to choose its threshold: every ``every``-th scene of
    each place with several (Dubai images, Kampala and Dhaka chips, NEON plots), at least one; a place of one scene
    is all training. When that holds out nothing (every place one scene: a user's one labelled image), the last
    ``1 / every`` of each scene's tiles instead (its bottom rows: tiles run row by row)."""
    held = np.zeros(len(scenes), bool)
    for p in np.unique(places):
        names = sorted(set(scenes[places == p]))
        if len(names) > 1:
            held |= np.isin(scenes, names[every - 1 :: every] or names[-1:]) & (places == p)
    if not held.any():
        for name in np.unique(scenes):
            rows = np.flatnonzero(scenes == name)
            held[rows[len(rows) - len(rows) // every :]] = True
    return held


def calibrate_pregate(model_path: str, data: list[str], split: str = "train", tile_px: int = 512,
                      overlap_px: int = 256, target_fraction: float = 0.005, recall: float = PREGATE_RECALL,
                      min_group_tiles: int = 5, steps: int = 2000, seed: int = 0, out: str | None = None,
                      progress=None) -> tuple[PreGate, Path]:
    """Train the thumbnail pre-gate (:mod:`geoseg.pregate`) on the configs' ``split`` tiles (``overlap_px`` apart:
    more tiles than the gate's), choose its threshold for ``recall`` on the held-out scenes (:func:`held_scenes`),
    write ``NAME.pregate.safetensors`` beside the model; returns (pre-gate, path)."""
    net, sha256 = load_model(model_path)
    tiles = collect_thumbnails(net, [load_config(p) for p in data], split, tile_px, overlap_px)
    target = tiles.building_fraction >= target_fraction
    held = held_scenes(tiles.place, tiles.scene)
    train_rows = np.flatnonzero(~held)
    thumb_net = train_thumbnet([tiles.thumbs[i] for i in train_rows], [tiles.cells[i] for i in train_rows],
                               target[train_rows], tiles.place[train_rows], steps=steps, seed=seed, ignore=IGNORE,
                               progress=progress)
    logits = score_thumbnails(thumb_net, tiles.thumbs)
    if not (held & target).any():
        raise GeosegError(f"pre-gate calibration: none of the {int(held.sum())} tiles kept out of training to choose "
                          "the threshold holds buildings; give more labelled ground")
    threshold = recall_threshold(logits[held], target[held], tiles.place[held], recall, min_group_tiles)
    passed = logits >= threshold
    report = {"data": list(data), "split": split, "tile_px": tile_px, "overlap_px": overlap_px,
              "target_fraction": target_fraction, "recall_target": recall, "steps": steps,
              "training_tiles": int(len(train_rows)), "threshold_tiles": int(held.sum()),
              "threshold_scenes": sorted(set(tiles.scene[held])),
              "held_out": rates(passed[held], target[held]), "training": rates(passed[~held], target[~held]),
              "pass_rate_of_empty_tiles_by_place": {
                  str(p): round(float(passed[(tiles.place == p) & ~target].mean()), 4)
                  for p in np.unique(tiles.place) if ((tiles.place == p) & ~target).any()}}
    pre = PreGate(thumb_net, threshold, THUMB_FACTOR, sha256, report)
    path = Path(out) if out else pregate_path(resolve_model_path(model_path))
    pre.save(path)
    return pre, path


POLICY_TAUS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@torch.inference_mode()
def policy_probabilities(net: SegBlocksModel, configs: list[tuple[TrainConfig, Path]], split: str, tile_px: int,
                         autocast: bool, progress=None) -> np.ndarray:
    """P(high resolution) of every block of every calibration tile, flat."""
    out = []
    for _, _, x, _ in tile_batches(net, configs, split, tile_px, progress):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out.append(net.policy(x, net.grid(x)).flatten().numpy())
    return np.concatenate(out)


def calibrate_policy(model_path: str, data: list[str], split: str = "train", tile_px: int = 512,
                     autocast: bool = False, progress=None) -> tuple[dict[str, float], Path]:
    """Thresholds {tau: P} with a fraction tau of calibration blocks at P(high) >= P, written into the card."""
    net, _ = load_model(model_path)
    if not isinstance(net, SegBlocksModel):
        raise GeosegError(f"model {net.card.name} is a {net.card.architecture}: only SegBlocks models have a policy")
    p = policy_probabilities(net, [load_config(d) for d in data], split, tile_px, autocast, progress)
    thresholds = {f"{tau:g}": round(float(np.quantile(p, 1 - tau)), 6) for tau in POLICY_TAUS}
    card_path = resolve_model_path(model_path).with_suffix(".json")
    net.card.policy_thresholds = thresholds
    net.card.training["policy_calibration"] = {"data": list(data), "split": split, "tile_px": tile_px,
                                               "blocks": int(p.size), "p_mean": round(float(p.mean()), 4),
                                               "p_std": round(float(p.std()), 4)}
    net.card.to_json(card_path)
    return thresholds, card_path
