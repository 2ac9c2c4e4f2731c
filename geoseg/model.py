"""Encode and decode stages: a segmentation model as encoder -> decoder -> head, each callable on its own.

The gate (BGS-Net) sits between :meth:`SegmentationModel.encode` and :meth:`SegmentationModel.decode`;
``decode(features, index)`` runs the decoder on a subset of the batch in one call.

A model on disk is two files side by side: ``NAME.safetensors`` (weights, never unpickled) and ``NAME.json``
(the model card, :mod:`geoseg.card`: classes, bands, GSD, normalisation, training data, metrics, licence).
"""

from __future__ import annotations

import os

from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from .architectures import architecture, import_named
from .atomic import atomic_path
from .card import ModelCard, file_sha256, resolve_model_path
from .errors import GeosegError
from .nets.unet import RESNET_LAYERS, ResNetEncoder, UnetDecoder, segmentation_head
from .nets.blocks_dynamic import BlockLayout, block_combine, block_sample
from .nets.segblocks import BlockPolicy, unet_on_blocks


class GeoModel(nn.Module):
    """What every geoseg model shares: its card, input preparation, and ``encode`` -> (gate) -> ``decode``."""

    card: ModelCard

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def prepare(self, pixels: torch.Tensor) -> torch.Tensor:
        """Scene-stretched [0, 1] pixels (N, bands, H, W) -> model input: standardised with the card's mean/std,
        padded at the bottom/right to the card's size multiple, channels_last. Training and inference both
        call this, so they cannot drift apart."""
        mean = torch.tensor(self.card.norm_mean, device=pixels.device).view(1, -1, 1, 1)
        std = torch.tensor(self.card.norm_std, device=pixels.device).view(1, -1, 1, 1)
        x = pad_to_multiple((pixels - mean) / std, self.card.size_multiple_px)
        return x.contiguous(memory_format=torch.channels_last)


class SegmentationModel(GeoModel):
    """A U-Net split into its three parts: ``encode`` -> (gate) -> ``decode`` -> logits."""

    def __init__(self, card: ModelCard):
        super().__init__()
        self.card = card
        if card.encoder in RESNET_LAYERS and len(card.bands) == 3:  # geoseg's own: torch only (geoseg.nets.unet)
            self.encoder = ResNetEncoder(card.encoder, len(card.bands))
            self.decoder = UnetDecoder(self.encoder.out_channels, tuple(card.decoder_channels))
            self.head = segmentation_head(card.decoder_channels[-1], len(card.classes))
            return
        # other encoders from smp, imported here: it pulls in timm, torchvision and torch._dynamo (1.7 s)
        import segmentation_models_pytorch as smp

        unet = smp.Unet(
            encoder_name=card.encoder,
            encoder_weights=None,  # nothing is downloaded at run time
            in_channels=len(card.bands),
            classes=len(card.classes),
            decoder_channels=tuple(card.decoder_channels),
        )
        self.encoder, self.decoder, self.head = unet.encoder, unet.decoder, unet.segmentation_head

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Multi-scale features; the last one is the bottleneck."""
        return self.encoder(x)

    def decode(self, features: list[torch.Tensor], index: torch.Tensor | None = None) -> torch.Tensor:
        """Class logits for the batch items in ``index`` (all when None), in one decoder call."""
        if index is not None:
            features = [f[index] for f in features]
        return self.head(self.decoder(features))


class SegBlocksModel(SegmentationModel):
    """SegBlocks: the U-Net with a policy net that picks, per block of ``card.block_px``, high or half
    resolution (:mod:`geoseg.nets.segblocks`). ``forward`` is the block-processed network; ``encode``/``decode``
    stay the static U-Net. ``tau`` (fraction of high-resolution blocks) is chosen at inference: the card's
    calibrated threshold for it when there is one, else the top ``tau`` of each tile's blocks."""

    def __init__(self, card: ModelCard):
        if card.block_px < 64 or card.size_multiple_px % card.block_px:
            raise GeosegError(f"model {card.name}: block_px must be >= 64 and divide size_multiple_px")
        super().__init__(card)
        self.policy = BlockPolicy(len(card.bands))
        self.tau = card.tau
        self.last_high_fraction = 0.0

    def train(self, mode: bool = True) -> "SegBlocksModel":
        """BatchNorms of the U-Net keep their inference statistics in training too (blocks of two resolutions
        would skew batch statistics); the policy's train normally."""
        super().train(mode)
        for m in (self.encoder, self.decoder, self.head):
            m.apply(lambda layer: layer.eval() if isinstance(layer, nn.BatchNorm2d) else None)
        return self

    def grid(self, x: torch.Tensor) -> tuple[int, int]:
        return x.shape[-2] // self.card.block_px, x.shape[-1] // self.card.block_px

    def choose(self, x: torch.Tensor) -> BlockLayout:
        """Blocks at high resolution: P(high) >= the card's threshold for ``tau``, or each tile's top ``tau``."""
        probabilities = self.policy(x, self.grid(x))
        threshold = self.card.policy_thresholds.get(f"{self.tau:g}")
        if threshold is not None:
            return BlockLayout(probabilities >= threshold)
        flat = probabilities.flatten(1)
        k = int(round(self.tau * flat.shape[1]))
        high = torch.zeros_like(flat, dtype=torch.bool)
        high.scatter_(1, flat.topk(k, dim=1).indices, True)
        return BlockLayout(high.view_as(probabilities))

    def forward_blocks(self, x: torch.Tensor, layout: BlockLayout) -> torch.Tensor:
        blocks = block_sample(x, layout, self.card.block_px)
        return block_combine(unet_on_blocks(self.encoder, self.decoder, self.head, blocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layout = self.choose(x)
        self.last_high_fraction = layout.high_fraction
        return self.forward_blocks(x, layout)


class InstanceModel(GeoModel):
    """Mask R-CNN for building instances (:mod:`geoseg.nets.maskrcnn`): ``maskrcnn`` (C4 baseline) or
    ``maskrcnn-light`` (separated large kernel + light head). ``detect`` gives instances per tile; ``forward``
    their semantic view (:func:`geoseg.instances.semantic_logits`), so that validation and the semantic
    outputs of the pipeline work as for the other models."""

    def __init__(self, card: ModelCard):
        super().__init__()
        from .nets.maskrcnn import build_maskrcnn

        self.card = card
        depth = int(card.encoder.removeprefix("resnet") or 18)
        # detections under the card's threshold are dropped before the mask branch, which then runs on fewer RoIs
        self.detector = build_maskrcnn(architecture(card.architecture).variant, depth, len(card.bands), 2, tile_px=512,
                                       box_score_thresh=card.instance_score_threshold, _skip_resize=True)

    def set_score_threshold(self, score: float) -> None:
        """Keep detections scoring at least ``score`` (0-1), in the card and in the detector, which drops the
        others before its mask branch."""
        self.card.instance_score_threshold = score
        self.detector.roi_heads.score_thresh = score

    def detect(self, x: torch.Tensor) -> list[dict]:
        return self.detector(list(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from .instances import semantic_logits

        return semantic_logits(self.detect(x), len(self.card.classes), self.card.building_class, tuple(x.shape[-2:]),
                               self.card.instance_score_threshold)

    def init_backbone_from(self, path: str | os.PathLike) -> str:
        """Start backbone (and the baseline's C5 head) from a U-Net's ResNet encoder of the same depth."""
        path = resolve_model_path(path)
        source = load_file(str(path))
        stages = {"conv1": "0", "bn1": "1", "layer1": "4", "layer2": "5", "layer3": "6"}
        own = self.detector.state_dict()
        for key, value in source.items():
            if not key.startswith("encoder."):
                continue
            stage, rest = key.removeprefix("encoder.").split(".", 1)
            target = f"backbone.{stages[stage]}.{rest}" if stage in stages else f"roi_heads.box_head.0.{rest}"
            if target in own and own[target].shape == value.shape:
                own[target] = value.to(own[target].dtype)
        self.detector.load_state_dict(own)
        return file_sha256(path)


class RealtimeModel(GeoModel):
    """Fast-SCNN or ContextNet (:mod:`geoseg.nets`) behind the same interface, with auxiliary heads for training."""

    def __init__(self, card: ModelCard):
        super().__init__()
        self.card = card
        self.net = import_named(architecture(card.architecture).variant)(len(card.bands), len(card.classes))

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.net.encode(x)

    def decode(self, features: list[torch.Tensor], index: torch.Tensor | None = None) -> torch.Tensor:
        return self.net.decode(features, index)

    def aux_logits(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        return self.net.aux_logits(features)


def build_model(card: ModelCard) -> GeoModel:
    """The (untrained) model a card describes: the model class of its architecture's row
    (:data:`geoseg.architectures.ARCHITECTURES`)."""
    try:
        row = architecture(card.architecture)
    except GeosegError as err:
        raise GeosegError(f"model {card.name}: {err}") from None
    return import_named(row.model)(card)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad (N, C, H, W) at the bottom/right up to a multiple of ``multiple`` px (reflect, or replicate when tiny)."""
    h, w = x.shape[-2:]
    pad_h, pad_w = -h % multiple, -w % multiple
    if not (pad_h or pad_w):
        return x
    mode = "reflect" if pad_h < h and pad_w < w else "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)


def bf16_is_fast(device: str = "cpu") -> bool:
    """bf16 autocast pays off on CUDA and on CPUs with AMX or AVX512-BF16 (2.9x measured on an AMX Xeon);
    elsewhere it is slower than fp32. On a CPU, torch must also dispatch its AVX512 kernels: with
    ``ATEN_CPU_CAPABILITY=avx2`` (how a machine without AVX512 is imitated on one that has it) the answer is no."""
    if device.startswith("cuda"):
        return True
    if not torch.backends.cpu.get_cpu_capability().startswith("AVX512"):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def use_bf16(precision: str, device: str = "cpu") -> bool:
    """Resolve a precision option ("auto", "bf16", "fp32") to whether bf16 autocast is used."""
    if precision not in ("auto", "bf16", "fp32"):
        raise GeosegError(f"--precision {precision!r}: choose auto, bf16 or fp32")
    return precision == "bf16" or (precision == "auto" and bf16_is_fast(device))


def load_model(model: str | os.PathLike | None = None) -> tuple[GeoModel, str]:
    """Build the model from its card and load its safetensors weights. Returns (model in eval mode, sha256)."""
    path = resolve_model_path(model)
    card = ModelCard.from_json(path.with_suffix(".json"))
    net = build_model(card)
    try:
        raw = load_file(str(path))
        _check_weight_values(raw, net.state_dict())
        state = {k: v.float() for k, v in raw.items()}
        missing, unexpected = net.load_state_dict(state, strict=False)
        missing = sorted(set(missing) - _aliases(net))  # a shared module is saved once, under its first name
        if unexpected or missing:
            raise GeosegError(f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    except Exception as err:  # safetensors header errors, missing/unexpected keys, shape mismatches
        raise GeosegError(f"{path}: weights do not match the card ({str(err).splitlines()[0][:200]})") from None
    return net.eval(), file_sha256(path)


def _check_weight_values(raw: dict, expected: dict) -> None:
    """Weights a model can run with: a floating tensor wherever the model has one (int32 weights gave a model
    that found nothing), every value finite (one NaN spreads to every pixel). Names and shapes are checked by
    ``load_state_dict``."""
    for name, tensor in raw.items():
        want = expected.get(name)
        if want is not None and want.is_floating_point() and not tensor.is_floating_point():
            raise GeosegError(f"tensor {name} is {str(tensor.dtype).removeprefix('torch.')}, not floating point")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise GeosegError(f"tensor {name} holds NaN or infinite values")


def fold_batchnorm(net: nn.Module) -> nn.Module:
    """For inference only: fold every BatchNorm that directly follows a Conv2d inside an ``nn.Sequential`` into
    that convolution's weights and bias (in place; the BatchNorm becomes Identity). Same outputs to float
    rounding, one pass over memory less per layer: Fast-SCNN 20.7 -> 17.7 ms per 512 px tile (bf16, 1 thread).
    BatchNorms kept as attributes (the ResNet blocks of smp's encoders) are left as they are."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    if net.training:
        raise GeosegError("fold_batchnorm: the model must be in eval mode")
    for module in net.modules():
        if isinstance(module, nn.Sequential):
            for i in range(len(module) - 1):
                if isinstance(module[i], nn.Conv2d) and isinstance(module[i + 1], nn.BatchNorm2d):
                    module[i] = fuse_conv_bn_eval(module[i], module[i + 1])
                    module[i + 1] = nn.Identity()
    return net


def init_weights_from(net: GeoModel, path: str | os.PathLike) -> str:
    """Start ``net`` from another model's weights (fine-tuning). Tensors of equal shape are copied; a tensor
    whose leading (output-class) size differs gets the overlapping classes copied and keeps its fresh
    initialisation for the rest, so a 2-class model can seed a 3-class one. A sub-network the source lacks
    entirely (the SegBlocks policy on a U-Net) keeps its fresh initialisation. Returns the source's sha256."""
    path = resolve_model_path(path)
    source = load_file(str(path))
    own = net.state_dict()
    source_modules = {key.split(".")[0] for key in source}
    for key, value in own.items():
        if key.split(".")[0] not in source_modules:
            continue
        if key not in source or source[key].dim() != value.dim():
            raise GeosegError(f"init_from {path}: not the same architecture (no matching {key!r})")
        theirs = source[key].to(value.dtype)
        if theirs.shape == value.shape:
            own[key] = theirs
        elif theirs.shape[1:] == value.shape[1:]:
            n = min(len(theirs), len(value))
            own[key][:n] = theirs[:n]
        else:
            raise GeosegError(f"init_from {path}: {key} has shape {tuple(theirs.shape)}, need {tuple(value.shape)}")
    net.load_state_dict(own)
    return file_sha256(path)


def _aliases(net: nn.Module) -> set[str]:
    """State-dict keys naming a tensor that an earlier key already names (modules shared between branches)."""
    seen, aliases = set(), set()
    for key, value in net.state_dict(keep_vars=True).items():
        if id(value) in seen:
            aliases.add(key)
        seen.add(id(value))
    return aliases


def save_model(net: GeoModel, path: str | os.PathLike, half: bool = True) -> str:
    """Write weights (fp16 by default, to keep shipped models small) and card; returns the weights' sha256."""
    path = Path(path)
    aliases = _aliases(net)  # a module used twice (a head shared by two branches) is saved once
    state = {k: (v.half() if half and v.is_floating_point() else v).contiguous()
             for k, v in net.state_dict().items() if k not in aliases}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp))
        os.chmod(tmp, 0o644)  # safetensors creates 0600 files; shipped weights must be readable by all
    net.card.to_json(path.with_suffix(".json"))
    return file_sha256(path)
