"""Gate stage (BGS-Net): from a tile's bottleneck, decide whether its decoder runs.

A tile's *channel mean* is ``mu_c`` = the mean of bottleneck channel ``c`` over its H' x W' cells (paper eq. 5;
a 512 px tile has a 16 x 16 bottleneck with a ResNet encoder). The gate is two stages of per-channel rules:

* stage 1 (eq. 12-14): K1 rules ``mu_c > theta_c`` (or ``<`` where buildings lower the channel), OR-ed: a tile
  that fires any of them may contain buildings;
* stage 2 (eq. 18-20): K2 rules ``mu_c > gamma_c`` (or ``<``), AND-ed: a stage-1 tile that fires all of them
  is a known false alarm (road, bare land... look-alikes) and is skipped.

``open = stage1 and not stage2``. Only the channels the rules name are averaged at inference, so the gate
costs ``len(channels) * (H' * W' + 1)`` additions and comparisons per tile.

Calibration (no retraining, :func:`calibrate_rules`) labels calibration tiles *target* when at least
``target_fraction`` of their labelled pixels are building, and per channel takes the mean difference
``delta_c`` (eq. 10), the direction, and the ROC threshold that maximises TPR - FPR (Youden's J, eq. 15-17).
Beyond the paper, ``target_recall`` moves all thresholds together, in units of each channel's standard
deviation, to the least permissive setting whose building-tile recall on the calibration tiles meets it.

Beyond the paper, a *learned* rule (:class:`LinearHead`, ``rule: linear`` in the gate file or ``geoseg run --gate
linear``): logistic regression on all channel means (standardised), fitted to the same tile labels with classes
weighted equally; its logit threshold is chosen the paper's way, for a recall target per place, but on
*out-of-fold* logits (whole scenes held out, :func:`fit_linear_head`): in-sample, 512 weights fit the
calibration tiles too well and the threshold comes out too strict for other ground. (Holding out whole *places*
instead makes every place's building tiles score low, and the threshold opens every tile.) It reads every
channel: C * (H' * W' + 1) additions per tile, still nothing against the decoder.

A gate is stored as ``NAME.gate.json`` beside ``NAME.safetensors`` and bound to the weights' sha256.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from .atomic import write_text_atomic
from .errors import GeosegError


@dataclass(frozen=True)
class ChannelRule:
    channel: int
    threshold: float
    higher: bool  # fires when the channel mean is above the threshold (else: below)

    def fires(self, means: np.ndarray) -> np.ndarray:
        x = means[:, self.channel]
        return x > self.threshold if self.higher else x < self.threshold


@dataclass(frozen=True)
class LinearHead:
    """Logistic regression on all bottleneck channel means: ``logit = w . (mu - centre) / scale + bias``; a tile
    opens where its logit is at least ``threshold``."""

    weight: list[float]
    bias: float
    centre: list[float]
    scale: list[float]
    threshold: float

    def logits(self, means: np.ndarray) -> np.ndarray:
        return ((means - np.asarray(self.centre)) / np.asarray(self.scale)) @ np.asarray(self.weight) + self.bias

    def open(self, means: np.ndarray) -> np.ndarray:
        return self.logits(means) >= self.threshold


#: the gate rules a gate file can hold: the paper's channel rules, the learned head
GATE_RULES = ("paper", "linear")


@dataclass
class Gate:
    """A calibrated two-stage gate for one model (see the module docstring)."""

    model_sha256: str
    bottleneck_channels: int
    stage1: list[ChannelRule]  # OR
    stage2: list[ChannelRule] = field(default_factory=list)  # AND: all fire -> a false alarm, skipped
    # Linear probe on the bottleneck (classes x channels, classes): a coarse prediction for skipped tiles.
    coarse_weight: list[list[float]] | None = None
    coarse_bias: list[float] | None = None
    calibration: dict = field(default_factory=dict)  # how it was made, and its measured rates
    linear: LinearHead | None = None  # the learned rule, where calibrated
    rule: str = "paper"  # which rule opens tiles: "paper" (stage 1 and 2) or "linear"

    @property
    def channels(self) -> list[int]:
        """The bottleneck channels the rule reads (the only ones averaged at inference)."""
        if self.rule == "linear":
            return list(range(self.bottleneck_channels))
        return sorted({r.channel for r in self.stage1 + self.stage2})

    def with_rule(self, rule: str | None) -> "Gate":
        """This gate deciding by ``rule`` (None: the file's own); refuses a rule it was not calibrated for."""
        if rule is None or rule == self.rule:
            return self
        if rule not in GATE_RULES:
            raise GeosegError(f"--gate {rule}: use one of {', '.join(GATE_RULES)}")
        if rule == "linear" and self.linear is None:
            raise GeosegError("--gate linear: this gate has no learned head; run `geoseg calibrate` again to fit one")
        return replace(self, rule=rule)

    def ops_per_tile(self, bottleneck_cells: int) -> int:
        """Additions for the channel means plus one comparison per rule (the learned head: a multiply-add per
        channel and one comparison)."""
        if self.rule == "linear":
            return len(self.channels) * (bottleneck_cells + 1) + 1
        return len(self.channels) * bottleneck_cells + len(self.stage1) + len(self.stage2)

    def open(self, means: np.ndarray) -> np.ndarray:
        """bool (N,): which tiles go through the decoder, from channel means (N, C) (unused channels ignored)."""
        if self.rule == "linear":
            return self.linear.open(means)
        return gate_open(self.stage1, self.stage2, means)

    def to_json(self, path: str | os.PathLike) -> None:
        write_text_atomic(path, json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "Gate":
        data = json.loads(Path(path).read_text())
        data["stage1"] = [ChannelRule(**r) for r in data["stage1"]]
        data["stage2"] = [ChannelRule(**r) for r in data.get("stage2", [])]
        if data.get("linear") is not None:
            data["linear"] = LinearHead(**data["linear"])
        return cls(**data)


def gate_path(model_path: str | os.PathLike) -> Path:
    """Where the gate of ``NAME.safetensors`` lives: ``NAME.gate.json``."""
    return Path(model_path).with_suffix(".gate.json")


def pregate_path(model_path: str | os.PathLike) -> Path:
    """Where the cascade's pre-gate (:mod:`geoseg.pregate`) of ``NAME.safetensors`` lives:
    ``NAME.pregate.safetensors``."""
    path = Path(model_path)
    return path.with_name(path.stem + ".pregate.safetensors")


def load_gate(model_path: str | os.PathLike, model_sha256: str) -> Gate:
    """The gate beside a model; refuses a gate calibrated for other weights."""
    path = gate_path(model_path)
    if not path.exists():
        raise GeosegError(f"no calibrated gate for {Path(model_path).name}: run `geoseg calibrate` to make {path.name}")
    gate = Gate.from_json(path)
    if gate.model_sha256 != model_sha256:
        raise GeosegError(f"{path.name} was calibrated for other weights (sha256 {gate.model_sha256[:12]}..., "
                          f"model is {model_sha256[:12]}...): calibrate again")
    return gate


def gate_open(stage1: list[ChannelRule], stage2: list[ChannelRule], means: np.ndarray) -> np.ndarray:
    first = np.zeros(len(means), bool)
    for rule in stage1:
        first |= rule.fires(means)
    if not stage2:
        return first
    false_alarm = np.ones(len(means), bool)
    for rule in stage2:
        false_alarm &= rule.fires(means)
    return first & ~false_alarm


# ---- calibration: pure functions over channel means (N tiles, C channels) and tile labels --------------------


def youden_threshold(x: np.ndarray, positive: np.ndarray, higher: bool) -> tuple[float, float, float]:
    """The threshold maximising TPR - FPR for the rule ``x > t`` (``higher``) or ``x < t``: (t, TPR, FPR).
    Candidates are the midpoints between consecutive distinct values (and both ends)."""
    values = np.unique(x)
    candidates = np.concatenate([[values[0] - 1.0], (values[1:] + values[:-1]) / 2, [values[-1] + 1.0]])
    pos, neg = np.sort(x[positive]), np.sort(x[~positive])
    if higher:
        tpr = 1 - np.searchsorted(pos, candidates, "right") / max(len(pos), 1)
        fpr = 1 - np.searchsorted(neg, candidates, "right") / max(len(neg), 1)
    else:
        tpr = np.searchsorted(pos, candidates, "left") / max(len(pos), 1)
        fpr = np.searchsorted(neg, candidates, "left") / max(len(neg), 1)
    best = int(np.argmax(tpr - fpr))
    return float(candidates[best]), float(tpr[best]), float(fpr[best])


def channel_table(means: np.ndarray, positive: np.ndarray) -> list[dict]:
    """Per channel: means of both sets (eq. 8-9), delta (eq. 10), direction and Youden threshold (eq. 15-17)."""
    rows = []
    for c in range(means.shape[1]):
        mu_pos, mu_neg = float(means[positive, c].mean()), float(means[~positive, c].mean())
        higher = mu_pos >= mu_neg
        threshold, tpr, fpr = youden_threshold(means[:, c], positive, higher)
        rows.append({"channel": c, "mu_positive": mu_pos, "mu_negative": mu_neg, "delta": abs(mu_pos - mu_neg),
                     "higher": bool(higher), "threshold": threshold, "tpr": tpr, "fpr": fpr, "j": tpr - fpr})
    return rows


def rates(opened: np.ndarray, target: np.ndarray) -> dict:
    """Building-tile recall, precision and the decoder execution rate of a gate decision."""
    tp = int((opened & target).sum())
    return {"recall": round(tp / max(int(target.sum()), 1), 4), "precision": round(tp / max(int(opened.sum()), 1), 4),
            "execution_rate": round(float(opened.mean()), 4), "tpr_minus_fpr": round(
                tp / max(int(target.sum()), 1) - int((opened & ~target).sum()) / max(int((~target).sum()), 1), 4)}


def _shifted(rules: list[ChannelRule], sigma: np.ndarray, t: float) -> list[ChannelRule]:
    """Rules moved ``t`` standard deviations towards firing more (t < 0: less)."""
    return [replace(r, threshold=r.threshold - t * sigma[r.channel] if r.higher else r.threshold + t * sigma[r.channel])
            for r in rules]


def _least_shift(make, recall_of, target_recall: float, lo: float = -6.0, hi: float = 6.0) -> float:
    """Smallest t in [lo, hi] with recall_of(make(t)) >= target_recall (recall grows with t); hi if none."""
    if recall_of(make(hi)) < target_recall:
        return hi
    if recall_of(make(lo)) >= target_recall:
        return lo
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if recall_of(make(mid)) >= target_recall else (mid, hi)
    return hi


def _top_rules(table: list[dict], k: int) -> list[ChannelRule]:
    ranked = sorted(table, key=lambda r: (-r["j"], -r["delta"]))[:k]
    return [ChannelRule(r["channel"], r["threshold"], r["higher"]) for r in ranked]


def _stage2(means: np.ndarray, target: np.ndarray, stage1: list[ChannelRule], first: np.ndarray, sigma: np.ndarray,
            k2: int, target_recall: float | None, recall_of) -> tuple[list[ChannelRule], float, list]:
    """Stage 2 (the false-alarm filter) among the tiles stage 1 opens (``first``): its rules, their threshold shift
    (sigmas) and the channel table they came from; no rules when too few tiles or when they do not improve the
    gate (J, or the execution rate at the required recall)."""
    false_alarm, hit = first & ~target, first & target
    if k2 <= 0 or false_alarm.sum() < 5 or hit.sum() < 5:
        return [], 0.0, []
    table2 = channel_table(means[first], false_alarm[first])
    candidate, shift2 = _top_rules(table2, k2), 0.0
    if target_recall is not None:
        # stage-2 rules fire *less* as t grows, so recall grows with t
        shift2 = _least_shift(lambda t: _shifted(candidate, sigma, -t), lambda s2: recall_of(stage1, s2), target_recall)
        candidate = _shifted(candidate, sigma, -shift2)
        better = rates(gate_open(stage1, candidate, means), target)["execution_rate"] < rates(first, target)["execution_rate"] \
            and recall_of(stage1, candidate) >= target_recall
    else:
        better = rates(gate_open(stage1, candidate, means), target)["tpr_minus_fpr"] > rates(first, target)["tpr_minus_fpr"]
    return (candidate if better else []), shift2, table2


def calibrate_rules(means: np.ndarray, target: np.ndarray, k1: int = 10, k2: int = 3,
                    target_recall: float | None = None, groups: np.ndarray | None = None,
                    min_group_targets: int = 10) -> tuple[list[ChannelRule], list[ChannelRule], dict]:
    """Stage-1 and stage-2 rules from calibration tiles, and a report of what was chosen and why.

    Stage 1: the K1 channels with the best single-channel J, each at its Youden threshold. Stage 2: among the
    tiles stage 1 opens, the K2 channels that best tell false alarms (non-target) from targets, each at its
    Youden threshold for that split; it is kept only if it improves the gate (J, or the execution rate at the
    required recall). With ``target_recall`` the thresholds of each stage are moved together (see module).

    ``groups`` (one label per tile, e.g. the folder a scene came from): the recall target must then hold in
    *every* group with at least ``min_group_targets`` target tiles, not only pooled — a gate calibrated this
    way keeps its recall on imagery unlike most of the calibration set (worst-group calibration).
    """
    target = np.asarray(target, bool)
    if target.all() or not target.any():
        raise GeosegError("calibration needs tiles with and without buildings; "
                          f"got {int(target.sum())} target tiles of {len(target)}")
    sigma = means.std(axis=0) + 1e-12
    table = channel_table(means, target)
    stage1 = _top_rules(table, k1)
    checked = [np.ones(len(target), bool)]
    if groups is not None:
        groups = np.asarray(groups)
        checked += [groups == g for g in np.unique(groups) if (target & (groups == g)).sum() >= min_group_targets]

    def recall_of(s1, s2=()):
        opened = gate_open(s1, list(s2), means)
        return min(rates(opened[rows], target[rows])["recall"] for rows in checked)

    shift1 = 0.0
    if target_recall is not None:
        shift1 = _least_shift(lambda t: _shifted(stage1, sigma, t), recall_of, target_recall)
        stage1 = _shifted(stage1, sigma, shift1)
    first = gate_open(stage1, [], means)
    stage2, shift2, table2 = _stage2(means, target, stage1, first, sigma, k2, target_recall, recall_of)
    report = {
        "tiles": int(len(target)), "target_tiles": int(target.sum()),
        "mode": "youden" if target_recall is None else f"target_recall {target_recall}"
                + (f" in each of {len(checked) - 1} groups" if len(checked) > 1 else ""),
        "worst_group_recall": recall_of(stage1, stage2) if len(checked) > 1 else None,
        "threshold_shift_sigma": {"stage1": round(shift1, 4), "stage2": round(shift2, 4)},
        "stage1_channels": [_row(table, r.channel) for r in stage1],
        "stage2_channels": [_row(table2, r.channel) for r in stage2],
        "stage2_kept": bool(stage2),
        "stage1_only": rates(first, target),
        "gate": rates(gate_open(stage1, stage2, means), target),
    }
    return stage1, stage2, report


def _row(table: list[dict], channel: int) -> dict:
    row = next(r for r in table if r["channel"] == channel)
    return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in row.items()}


# ---- the learned rule ------------------------------------------------------------------------------------------


def recall_threshold(scores: np.ndarray, target: np.ndarray, groups: np.ndarray | None, recall: float,
                     min_group_targets: int = 10) -> float:
    """The highest threshold on ``scores`` (opening: score >= threshold) whose building-tile recall is at least
    ``recall`` pooled and in every group with at least ``min_group_targets`` target tiles."""
    checked = [np.ones(len(target), bool)]
    if groups is not None:
        checked += [groups == g for g in np.unique(groups) if (target & (groups == g)).sum() >= min_group_targets]
    best = np.inf
    for rows in checked:
        pos = np.sort(scores[rows & target])
        if len(pos):
            best = min(best, float(pos[int(np.floor((1 - recall) * len(pos) + 1e-9))]))
    if not np.isfinite(best):
        raise GeosegError("calibration needs tiles with buildings")
    return best


def _logistic(x: np.ndarray, target: np.ndarray, l2: float) -> tuple[np.ndarray, float]:
    """Class-balanced logistic regression with an L2 penalty ``l2`` on the weights (L-BFGS)."""
    import torch  # calibration only: the driver reads gate files without torch
    import torch.nn.functional as F

    xt = torch.from_numpy(np.asarray(x, np.float64))
    yt = torch.from_numpy(target.astype(np.float64))
    pos = max(float(yt.sum()), 1.0)
    weights = torch.where(yt > 0, 0.5 / pos, 0.5 / max(len(yt) - pos, 1.0))
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        loss = (weights * F.binary_cross_entropy_with_logits(xt @ w + b, yt, reduction="none")).sum() \
            + 0.5 * l2 / len(yt) * (w * w).sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    return w.detach().numpy(), float(b.detach())


def fit_linear_head(means: np.ndarray, target: np.ndarray, groups: np.ndarray, scenes: np.ndarray,
                    target_recall: float = 0.95, l2: float = 10.0, min_group_targets: int = 10,
                    folds: int = 5) -> tuple[LinearHead, dict]:
    """The learned rule from calibration tiles (see the module docstring): the head fitted on all tiles; its
    threshold the highest with ``target_recall`` pooled and in every group (place) with ``min_group_targets``
    building tiles, on *out-of-fold* logits: the scenes are dealt into ``folds`` folds and each fold's tiles are
    scored by a head fitted on the others (a tile is never scored by a head that saw its scene). Returns the head
    and a report."""
    target, groups, scenes = np.asarray(target, bool), np.asarray(groups), np.asarray(scenes)
    if target.all() or not target.any():
        raise GeosegError(f"calibration needs tiles with and without buildings; got {int(target.sum())} of {len(target)}")
    centre, scale = means.mean(0), means.std(0) + 1e-6
    x = (means - centre) / scale
    names = np.unique(scenes)
    fold_of = dict(zip(names, np.random.default_rng(0).permutation(len(names)) % folds))
    fold = np.array([fold_of[s] for s in scenes])
    out_of_fold = np.zeros(len(target))
    for k in range(folds):
        rows = fold == k
        if rows.any() and target[~rows].any() and (~target[~rows]).any():
            w, b = _logistic(x[~rows], target[~rows], l2)
            out_of_fold[rows] = x[rows] @ w + b
    threshold = recall_threshold(out_of_fold, target, groups, target_recall, min_group_targets)
    w, b = _logistic(x, target, l2)
    head = LinearHead([float(v) for v in w], b, [float(v) for v in centre], [float(v) for v in scale], threshold)
    report = {"l2": l2, "target_recall": target_recall, "min_group_targets": min_group_targets,
              "threshold_from": f"out-of-fold logits, {folds} folds of whole scenes",
              "out_of_fold": rates(out_of_fold >= threshold, target),
              "on_calibration_tiles": rates(head.open(means), target)}
    return head, report
