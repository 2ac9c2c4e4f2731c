"""SegBlocks: block modules exact against the ordinary network and an explicit per-block reference; policy
training moves probabilities the way the reward says."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from geoseg.card import ModelCard
from geoseg.model import SegBlocksModel, SegmentationModel, load_model
from geoseg.nets.blocks_dynamic import BlockLayout, Blocks, block_combine, block_pad, block_sample
from geoseg.nets.segblocks import block_means, reinforce_loss, unet_on_blocks

from conftest import SHARED_DATA, needs_shared_data


def small_unet(seed=0):
    torch.manual_seed(seed)
    card = ModelCard(name="t", architecture="unet", encoder="resnet18", classes=["background", "building"],
                     building_class=1, bands=["red", "green", "blue"], gsd_m=0.3, decoder_channels=[32, 16, 16, 8, 8])
    net = SegmentationModel(card).eval()
    for m in net.modules():  # non-trivial BatchNorm statistics, so that the test can see them
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return net


def on_blocks(net, x, high, block_px):
    blocks = block_sample(x, BlockLayout(high), block_px)
    return block_combine(unet_on_blocks(net.encoder, net.decoder, net.head, blocks))


@pytest.mark.parametrize("block_px,shape", [(64, (2, 3, 192, 320)), (128, (1, 3, 256, 384))])
@torch.inference_mode()
def test_all_high_equals_the_network_and_all_low_equals_it_on_the_pooled_tile(block_px, shape):
    net = small_unet()
    x = torch.randn(shape)
    grid = (shape[0], shape[2] // block_px, shape[3] // block_px)
    all_high = on_blocks(net, x, torch.ones(grid, dtype=torch.bool), block_px)
    assert torch.allclose(all_high, net(x), atol=1e-4)
    all_low = on_blocks(net, x, torch.zeros(grid, dtype=torch.bool), block_px)
    expected = F.interpolate(net(F.avg_pool2d(x, 2)), scale_factor=2, mode="nearest")
    assert torch.allclose(all_low, expected, atol=1e-4)
    assert not torch.allclose(all_low, all_high, atol=1e-2)  # the two are not trivially equal


@needs_shared_data()
@torch.inference_mode()
def test_exactness_on_a_real_tile_with_the_shipped_unet():
    rasterio = pytest.importorskip("rasterio")
    with rasterio.open(SHARED_DATA / "buildings" / "banepa" / "image.tif") as ds:
        pixels = ds.read(window=rasterio.windows.Window(512, 512, 256, 384))[:3].astype(np.float32)
    pixels = (pixels - pixels.min()) / max(np.ptp(pixels), 1)
    net, _ = load_model("buildings-unet-r18")
    x = net.prepare(torch.from_numpy(pixels)[None])
    grid = (1, 3, 2)  # 384 rows x 256 columns in 128 px blocks
    assert torch.allclose(on_blocks(net, x, torch.ones(grid, dtype=torch.bool), 128), net(x), atol=1e-3)
    low = F.interpolate(net(F.avg_pool2d(x, 2)), scale_factor=2, mode="nearest")
    assert torch.allclose(on_blocks(net, x, torch.zeros(grid, dtype=torch.bool), 128), low, atol=1e-3)


def reference_pad(b: Blocks, pad: int, fill: float) -> tuple[torch.Tensor, torch.Tensor]:
    """BlockPad built block by block from its 8 neighbours, each resampled to the block's resolution."""
    n, rows, cols = b.layout.grid
    order = {True: [tuple(i) for i in b.layout.high.nonzero().tolist()],
             False: [tuple(i) for i in (~b.layout.high).nonzero().tolist()]}

    def block_at(key, high_res):
        is_high = bool(b.layout.high[key])
        t = (b.high if is_high else b.low)[order[is_high].index(key)][None]
        if is_high and not high_res:
            t = F.avg_pool2d(t, 2)
        elif not is_high and high_res:
            t = F.interpolate(t, scale_factor=2, mode="nearest")
        return t[0]

    out = []
    for high_res in (True, False):
        side = b.side if high_res else b.side // 2
        spans = {-1: (slice(0, pad), slice(side - pad, side)), 0: (slice(pad, pad + side), slice(0, side)),
                 1: (slice(pad + side, 2 * pad + side), slice(0, pad))}
        padded = []
        for key in order[high_res]:
            canvas = torch.full((b.high.shape[1] if len(b.high) else b.low.shape[1], side + 2 * pad, side + 2 * pad), fill)
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    r, c = key[1] + dr, key[2] + dc
                    if 0 <= r < rows and 0 <= c < cols:
                        (dst_r, src_r), (dst_c, src_c) = spans[dr], spans[dc]
                        canvas[:, dst_r, dst_c] = block_at((key[0], r, c), high_res)[:, src_r, src_c]
            padded.append(canvas)
        out.append(torch.stack(padded) if padded else torch.zeros(0))
    return out[0], out[1]


@pytest.mark.parametrize("pad,fill", [(1, 0.0), (2, 0.0), (3, float("-inf"))])
def test_block_pad_of_a_mixed_grid_matches_the_per_block_reference(pad, fill):
    torch.manual_seed(pad)
    high = torch.rand(2, 3, 4) > 0.5
    high[0, 0, 0], high[0, 0, 1] = True, False  # both kinds present, also at the image edge
    layout = BlockLayout(high)
    x = torch.randn(2, 5, 3 * 8, 4 * 8)
    b = block_sample(x, layout, 8)
    got = block_pad(b, pad, fill)
    want_high, want_low = reference_pad(b, pad, fill)
    assert torch.equal(got.high, want_high) and torch.allclose(got.low, want_low, atol=1e-6)
    # and BlockCombine puts blocks back where they came from (high blocks exactly)
    combined = block_combine(b)
    view = combined.unflatten(2, (3, 8)).unflatten(4, (4, 8)).permute(0, 2, 4, 1, 3, 5)
    assert torch.equal(view[layout.indices(True)], x.unflatten(2, (3, 8)).unflatten(4, (4, 8)).permute(0, 2, 4, 1, 3, 5)[layout.indices(True)])


def test_block_sample_refuses_tiles_that_blocks_do_not_tile():
    with pytest.raises(ValueError, match="do not match"):
        block_sample(torch.zeros(1, 3, 100, 128), BlockLayout(torch.ones(1, 1, 1, dtype=torch.bool)), 128)


def test_one_reinforce_step_moves_probabilities_towards_the_reward():
    logits = torch.zeros(1, 2, 2, requires_grad=True)
    actions = torch.tensor([[[True, False], [True, False]]])
    # block (0,0): high res and harder than the image -> rewarded; (0,1): low res but hard -> punished (wants high)
    # (1,0): high res and easy -> punished; (1,1): low res and easy -> rewarded (stays low)
    block_loss = torch.tensor([[[2.0, 2.0], [0.0, 0.0]]])
    has_pixels = torch.ones(1, 2, 2, dtype=torch.bool)
    loss = reinforce_loss(torch.sigmoid(logits), actions, block_loss, has_pixels, torch.tensor([1.0]), tau=0.5)
    loss.backward()
    with torch.no_grad():
        moved = torch.sigmoid(logits - 0.1 * logits.grad) - 0.5
    assert moved[0, 0, 0] > 0 and moved[0, 0, 1] > 0 and moved[0, 1, 0] < 0 and moved[0, 1, 1] < 0
    # complexity alone (equal losses): with 3 of 4 blocks high and tau 0.25, every high block is pushed down
    logits.grad = None
    actions = torch.tensor([[[True, True], [True, False]]])
    reinforce_loss(torch.sigmoid(logits), actions, torch.ones(1, 2, 2), has_pixels, torch.tensor([1.0]), tau=0.25).backward()
    assert (logits.grad[actions] > 0).all() and (logits.grad[~actions] > 0).all()  # all towards low resolution
    # a block without valid pixels earns no task reward, however large its loss
    logits.grad = None
    reinforce_loss(torch.sigmoid(logits), actions, torch.tensor([[[9.0, 1.0], [1.0, 1.0]]]),
                   torch.tensor([[[False, True], [True, True]]]), torch.tensor([1.0]), tau=0.75).backward()
    assert torch.allclose(logits.grad, torch.zeros_like(logits.grad))


def test_block_means_ignore_invalid_pixels():
    values = torch.arange(16.0).view(1, 4, 4)
    valid = torch.ones(1, 4, 4, dtype=torch.bool)
    valid[0, :2, :2] = False
    means, has = block_means(values, valid, (2, 2))
    assert not has[0, 0, 0] and means[0, 0, 0] == 0 and means[0, 1, 1] == (10 + 11 + 14 + 15) / 4


@torch.inference_mode()
def test_policy_gives_one_probability_per_block_and_tau_picks_that_fraction():
    card = ModelCard(name="sb", architecture="segblocks", encoder="resnet18", classes=["background", "building"],
                     building_class=1, bands=["red", "green", "blue"], gsd_m=0.3, block_px=64, size_multiple_px=64,
                     decoder_channels=[32, 16, 16, 8, 8], tau=0.25)
    net = SegBlocksModel(card).eval()
    x = torch.randn(2, 3, 256, 320)
    p = net.policy(x, net.grid(x))
    assert p.shape == (2, 4, 5) and ((p >= 0) & (p <= 1)).all()
    out = net(x)
    assert out.shape == (2, 2, 256, 320) and net.last_high_fraction == pytest.approx(0.25)
    net.card.policy_thresholds = {"0.25": 2.0}  # a threshold no probability reaches: every block low
    net(x)
    assert net.last_high_fraction == 0.0


def tiny_segblocks(tmp_path, thresholds=None):
    from geoseg.model import save_model

    torch.manual_seed(0)
    card = ModelCard(name="tiny-segblocks", architecture="segblocks", encoder="resnet18",
                     classes=["background", "building"], building_class=1, bands=["red", "green", "blue"], gsd_m=0.3,
                     block_px=64, size_multiple_px=64, decoder_channels=[32, 16, 16, 8, 8], tau=0.5,
                     policy_thresholds=thresholds or {})
    path = tmp_path / "segblocks.safetensors"
    save_model(SegBlocksModel(card).eval(), path, half=False)
    return path


def test_pipeline_runs_segblocks_georeferenced_like_the_unet_and_reports_the_fraction(tmp_path, fast_options):
    import dataclasses

    import rasterio

    from geoseg.backends.unet import UNetBackend
    from geoseg.pipeline import run_scene

    from conftest import write_scene

    rng = np.random.default_rng(0)
    scene = write_scene(tmp_path / "scene.tif", rng.integers(0, 255, (3, 150, 230), dtype=np.uint8))
    path = tiny_segblocks(tmp_path)
    options = dataclasses.replace(fast_options, backend="segblocks", model=str(path), tau=0.25, tile_px=128,
                                  overlap_px=16)
    summary = run_scene(scene, tmp_path / "blocks", options)
    assert summary.backend == "segblocks" and summary.details["tau"] == 0.25 and summary.details["tau_rule"] == "top tau per tile"
    assert summary.details["high_res_fraction"] == pytest.approx(0.25)  # 128 px tiles: 2x2 blocks, one at full resolution
    run_scene(scene, tmp_path / "unet", fast_options, backend=UNetBackend(None, precision="fp32"))
    with rasterio.open(tmp_path / "blocks" / "scene" / "mask.tif") as a, \
            rasterio.open(tmp_path / "unet" / "scene" / "mask.tif") as b:
        assert (a.crs, a.transform, a.shape) == (b.crs, b.transform, b.shape)
        assert np.array_equal(a.read_masks(1), b.read_masks(1))


def test_segblocks_options_are_checked_before_any_work(tmp_path, fast_options):
    import dataclasses

    from geoseg.errors import GeosegError
    from geoseg.pipeline import run_scene

    from conftest import write_scene

    scene = write_scene(tmp_path / "scene.tif", np.zeros((3, 64, 64), np.uint8))
    path = tiny_segblocks(tmp_path)
    bad = {"must tile it": dict(backend="segblocks", model=str(path), tile_px=100),
           r"tau 1\.5": dict(backend="segblocks", model=str(path), tau=1.5),
           "segblocks only": dict(backend="unet", tau=0.4)}
    for message, changes in bad.items():
        with pytest.raises(GeosegError, match=message):
            run_scene(scene, tmp_path / "out", dataclasses.replace(fast_options, **changes))
    assert not (tmp_path / "out").exists()
    from geoseg.backends import BackendSpec, resolve_spec

    assert resolve_spec(BackendSpec(model=str(path))).name == "segblocks"  # --backend auto: the model's own


def test_joint_training_step_reaches_network_and_policy_and_keeps_batchnorm_statistics():
    from geoseg.losses import training_loss

    card = ModelCard(name="sb", architecture="segblocks", encoder="resnet18", classes=["background", "building"],
                     building_class=1, bands=["red", "green", "blue"], gsd_m=0.3, block_px=64, size_multiple_px=64,
                     decoder_channels=[32, 16, 16, 8, 8], tau=0.5)
    torch.manual_seed(0)
    net = SegBlocksModel(card).train()
    stats = net.encoder.bn1.running_mean.clone()
    y = torch.randint(0, 2, (2, 128, 128))
    y[:, :64, :64] = 255  # nodata
    loss, logs = training_loss(net, torch.randn(2, 3, 128, 128), y)
    loss.backward()
    assert net.policy.features[0][0].weight.grad.abs().sum() > 0 and net.encoder.conv1.weight.grad.abs().sum() > 0
    assert torch.equal(net.encoder.bn1.running_mean, stats) and net.policy.features[0][1].training
    assert 0 <= logs["high_fraction"] <= 1 and logs["policy_p_std"] >= 0
