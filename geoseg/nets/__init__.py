"""Segmentation architectures other than smp's U-Net, written for geoseg, each exposing the same split as
:class:`geoseg.model.SegmentationModel`: ``encode(x)`` -> features (the last one is what a gate reads),
``decode(features, index)`` -> logits at the padded input's size, and ``aux_logits(features)`` for the
auxiliary training losses. Shared building blocks live in :mod:`geoseg.nets.blocks`."""
