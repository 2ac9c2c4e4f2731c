"""Test-time augmentation (``--tta``): each view is undone before averaging, it reaches the backend from
`geoseg run` and jobs, and it is refused where it cannot apply."""

import dataclasses

import numpy as np
import pytest
import rasterio
import torch

from geoseg.backends import BackendSpec, describe_backend, resolve_spec
from geoseg.backends.unet import UNetBackend
from geoseg.errors import GeosegError
from geoseg.pipeline import run_scene

from conftest import write_scene


@pytest.fixture
def fastscnn():
    return "buildings-fastscnn"  # a trained net: an untrained one predicts the same class everywhere


@pytest.mark.parametrize("flip_dims", [(3,), (2,), (2, 3)], ids=["left-right", "up-down", "half turn"])
def test_tta_of_a_flipped_tile_is_the_flipped_tta(fastscnn, flip_dims):
    """Holds only if every view is turned back onto the tile before averaging; the net alone is not symmetric,
    which the last line checks so that the test can fail."""
    x = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    tta = UNetBackend(fastscnn, precision="fp32", tta=True)
    with torch.inference_mode():
        assert torch.allclose(tta.probabilities(x.flip(flip_dims)), tta.probabilities(x).flip(flip_dims), atol=1e-5)
        plain = UNetBackend(fastscnn, precision="fp32")
        assert not torch.allclose(plain.probabilities(x.flip(flip_dims)), plain.probabilities(x).flip(flip_dims),
                                  atol=1e-3)


def test_tta_runs_end_to_end_and_changes_the_probabilities(tmp_path, fast_options, fastscnn):
    scene = write_scene(tmp_path / "scene.tif", np.random.default_rng(0).integers(0, 255, (3, 150, 170), np.uint8))
    runs = {}
    for tta in (False, True):
        options = dataclasses.replace(fast_options, backend="fastscnn", model=fastscnn, tta=tta, formats=["geojson"])
        run_scene(scene, tmp_path / f"tta-{tta}", options)
        with rasterio.open(tmp_path / f"tta-{tta}" / "scene" / "probability.tif") as src:
            runs[tta] = src.read(1).astype(int)
    assert runs[True].shape == runs[False].shape and np.abs(runs[True] - runs[False]).max() > 0


def test_tta_skips_the_gate_and_is_refused_by_backends_it_cannot_repeat():
    spec = resolve_spec(BackendSpec(model="buildings-unet-r18", tta=True))
    assert spec.name == "unet"  # the default model has a gate; TTA runs it dense
    assert resolve_spec(BackendSpec(model="buildings-unet-r18")).name == "bgs"
    with pytest.raises(GeosegError, match="--tta applies to the dense backends"):
        describe_backend(resolve_spec(BackendSpec(name="segblocks", tta=True)))
