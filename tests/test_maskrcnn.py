"""Light and baseline Mask R-CNN: the separated large-kernel block, both designs and their widths, training
targets, saving shared heads, instances merged across tiles in the pipeline, mask AP, the score threshold."""

import pytest
import torch

from geoseg.nets.maskrcnn import SeparatedLargeKernel, build_maskrcnn, light_widths


@pytest.mark.parametrize("size", [(31, 32), (32, 31), (17, 17), (40, 64)])
def test_separated_large_kernel_keeps_spatial_size(size):
    block = SeparatedLargeKernel(8, mid_channels=16, out_channels=12, k=15)
    assert block(torch.randn(2, 8, *size)).shape == (2, 12, *size)


def test_separated_large_kernel_parameter_count():
    c_in, mid, out, k = 1024, 256, 256, 15  # the paper's ResNet-50 C4 setting
    block = SeparatedLargeKernel(c_in, mid, out, k)
    expected = 2 * (c_in * mid * k + mid) + 2 * (mid * out * k + out)
    assert sum(p.numel() for p in block.parameters()) == expected


@torch.no_grad()
def test_separated_large_kernel_sees_a_full_k_by_k_square():
    torch.manual_seed(0)
    k = 15
    block = SeparatedLargeKernel(1, mid_channels=4, out_channels=1, k=k)
    impulse = torch.zeros(1, 1, 41, 41)
    impulse[0, 0, 20, 20] = 1.0
    response = (block(impulse) - block(torch.zeros_like(impulse)))[0, 0].abs()
    inside = torch.zeros_like(response, dtype=torch.bool)
    inside[20 - k // 2 : 21 + k // 2, 20 - k // 2 : 21 + k // 2] = True
    assert (response[inside] > 1e-7).all() and (response[~inside] == 0).all()


@pytest.mark.parametrize("design", ["baseline", "light"])
@torch.inference_mode()
def test_both_designs_give_boxes_and_masks_in_tile_coordinates(design):
    torch.manual_seed(0)
    net = build_maskrcnn(design, tile_px=256).eval()
    out = net([torch.rand(3, 256, 256), torch.rand(3, 200, 256)])
    assert len(out) == 2 and out[1]["masks"].shape[-2:] == (200, 256)
    assert out[0]["boxes"].shape[1] == 4 and len(out[0]["scores"]) == len(out[0]["labels"]) == len(out[0]["masks"])
    light = design == "light"
    assert net.backbone.out_channels == (64 if light else 256) and isinstance(net.backbone[-2], SeparatedLargeKernel) == light


def test_light_widths_are_the_papers_on_a_resnet50_and_cut_its_parameters_by_about_40_percent():
    assert light_widths(50) == ((256, 256), (256, 512)) and light_widths(18) == ((64, 64), (64, 128))
    params = {design: sum(p.numel() for p in build_maskrcnn(design, depth=50).parameters()) for design in ("baseline", "light")}
    assert 0.35 < 1 - params["light"] / params["baseline"] < 0.45  # the paper: "nearly 40 % parameters are decreased"


def test_instances_from_labels_split_touching_buildings_along_the_separator():
    import numpy as np

    from geoseg.instances import instances_from_labels

    labels = np.zeros((64, 64), np.uint8)
    labels[10:30, 10:50] = 1
    labels[10:30, 29:31] = 2  # shared wall: two buildings
    labels[40:42, 40:42] = 1  # a speck under min_pixels
    labels[50:60, 0:5] = 255  # unknown
    target = instances_from_labels(labels, building_class=1, separator_class=2, min_pixels=16)
    assert target["boxes"].tolist() == [[10, 10, 30, 30], [30, 10, 50, 30]]  # each takes its side of the wall
    assert target["masks"].shape == (2, 64, 64) and target["labels"].tolist() == [1, 1]
    assert target["masks"].sum((1, 2)).tolist() == [400, 400]  # the whole footprint, no pixel twice
    empty = instances_from_labels(np.zeros((8, 8), np.uint8), 1, 2)
    assert empty["boxes"].shape == (0, 4) and empty["masks"].shape == (0, 8, 8)


@pytest.mark.parametrize("architecture", ["maskrcnn", "maskrcnn-light"])
def test_instance_model_saves_once_shared_heads_and_loads_back(tmp_path, architecture):
    from geoseg.card import ModelCard
    from geoseg.model import build_model, load_model, save_model

    card = ModelCard(name="t", architecture=architecture, encoder="resnet18", classes=["background", "building"],
                     building_class=1, bands=["red", "green", "blue"], gsd_m=0.3)
    torch.manual_seed(0)
    net = build_model(card).eval()
    save_model(net, tmp_path / "m.safetensors", half=False)
    loaded, _ = load_model(str(tmp_path / "m.safetensors"))
    for (k, a), (_, b) in zip(net.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    with torch.inference_mode():
        logits = loaded(torch.rand(1, 3, 128, 160))
    assert logits.shape == (1, 2, 128, 160) and torch.allclose(logits.exp().sum(1), torch.ones(1, 128, 160), atol=1e-3)


class RectangleOracle:
    """A stand-in for a trained detector (not a mock of any library): every connected patch of one colour (the
    brightest band) in a tile is an instance with score 0.9, as a perfect model would report it, cut by the
    tile's edges."""

    name = "oracle"
    model_sha256 = "0" * 64

    def __init__(self):
        from geoseg.card import ModelCard

        self.card = ModelCard(name="oracle", architecture="maskrcnn-light", encoder="resnet18",
                              classes=["background", "building"], building_class=1, bands=["red", "green", "blue"],
                              gsd_m=0.3)

    def predict(self, pixels):
        import numpy as np
        from scipy import ndimage

        from geoseg.backends import BatchPrediction
        from geoseg.instances import Instance

        instances, probabilities = [], []
        for tile in pixels:
            colour = np.where(tile.max(0) > 0.5, tile.argmax(0) + 1, 0)
            found = []
            for level in (1, 2, 3):
                ids, n = ndimage.label(colour == level)
                for k, box in enumerate(ndimage.find_objects(ids), start=1):
                    found.append(Instance(box[0].start, box[1].start, ids[box] == k, 0.9))
            instances.append(found)
            building = (colour > 0).astype(np.float16)
            probabilities.append(np.stack([1 - building, building]))
        return BatchPrediction(np.stack(probabilities), decoded=len(pixels), instances=instances)


def test_two_touching_buildings_across_a_tile_border_are_two_whole_instances(tmp_path, fast_options):
    import geopandas as gpd
    import numpy as np
    import rasterio

    from geoseg.pipeline import run_scene

    from conftest import write_scene

    data = np.zeros((3, 300, 300), np.uint8)
    # 128 px tiles with 32 px overlap start at 0, 96 and 172 (rows and columns): A is cut by the edges of three
    # tiles and whole in one, B (touching A) is cut by tile 0's right edge; both are cut by row 128
    data[0, 100:150, 70:100] = 250  # building A (red): 50 x 30 px
    data[1, 100:150, 100:140] = 250  # building B (green), touching A: 50 x 40 px
    data[2, 10:20, 250:290] = 250  # C (blue), inside the last tile column
    scene = write_scene(tmp_path / "scene.tif", data)
    summary = run_scene(scene, tmp_path / "out", fast_options, backend=RectangleOracle())
    assert summary.details["instances_kept"] == summary.buildings == 3 and summary.details["instances_detected"] > 3
    with rasterio.open(tmp_path / "out" / "scene" / "instances.tif") as ds:
        ids = ds.read(1)
        assert ds.dtypes[0] == "uint32" and ds.transform == rasterio.open(scene).transform
    areas = {int(i): int((ids == i).sum()) for i in np.unique(ids) if i}
    assert sorted(areas.values()) == [400, 50 * 30, 50 * 40]  # each whole, none twice
    frame = gpd.read_file(tmp_path / "out" / "scene" / "buildings.gpkg")
    assert sorted(frame["id"]) == sorted(areas) and set(frame["score"]) == {0.9}
    assert sorted(np.round(frame.area / 0.09).astype(int)) == sorted(areas.values())


def test_mask_ap_of_a_constructed_case():
    import geopandas as gpd
    import shapely

    from geoseg.evaluate import ap_records, average_precision

    reference = gpd.GeoDataFrame(geometry=[shapely.box(0, 0, 10, 10), shapely.box(20, 0, 30, 10)])
    predicted = gpd.GeoDataFrame({"score": [0.95, 0.9, 0.8]},
                                 geometry=[shapely.box(50, 50, 60, 60),  # a false alarm, scored highest
                                           shapely.box(0, 0, 10, 10),  # perfect
                                           shapely.box(20, 0, 30, 7)])  # IoU 0.7
    records = ap_records(predicted, reference)
    assert [r[0] for r in records] == [0.95, 0.9, 0.8] and records[2][1][:5] == [True] * 5 and not records[2][1][5]
    result = average_precision(records, len(reference))
    # at IoU 0.5-0.7: precision 2/3 up to recall 1; above: 1/2 up to recall 1/2 (51 of the 101 recall points)
    expected = (5 * 2 / 3 + 5 * 0.5 * 51 / 101) / 10
    assert result["mask_ap50"] == pytest.approx(2 / 3, abs=1e-4) and result["mask_ap"] == pytest.approx(expected, abs=1e-4)


def test_score_threshold_is_checked_before_any_work_and_decides_which_detections_are_kept(tmp_path, fast_options):
    import dataclasses

    import numpy as np

    from geoseg.card import ModelCard
    from geoseg.errors import GeosegError
    from geoseg.model import build_model, save_model
    from geoseg.pipeline import run_scene

    from conftest import write_scene

    card = ModelCard(name="t", architecture="maskrcnn-light", encoder="resnet18", classes=["background", "building"],
                     building_class=1, bands=["red", "green", "blue"], gsd_m=0.3)
    torch.manual_seed(0)
    save_model(build_model(card).eval(), tmp_path / "m.safetensors", half=False)
    scene = write_scene(tmp_path / "scene.tif", np.random.default_rng(0).integers(0, 255, (3, 128, 128), np.uint8))
    options = dataclasses.replace(fast_options, backend="maskrcnn-light", model=str(tmp_path / "m.safetensors"),
                                  formats=["geojson"])
    bad = {r"score-threshold 1\.5": dict(score_threshold=1.5),
           "instance models only": dict(backend="unet", model=None, score_threshold=0.5)}
    for message, changes in bad.items():
        with pytest.raises(GeosegError, match=message):
            run_scene(scene, tmp_path / "bad", dataclasses.replace(options, **changes))
    assert not (tmp_path / "bad").exists()
    # an untrained detector scores everything near 0.5: all of its detections at 0, none at 1
    everything = run_scene(scene, tmp_path / "all", dataclasses.replace(options, score_threshold=0.0))
    nothing = run_scene(scene, tmp_path / "none", dataclasses.replace(options, score_threshold=1.0))
    assert everything.details["instances_detected"] > 0 and everything.details["instance_score_threshold"] == 0.0
    assert nothing.details["instances_detected"] == nothing.buildings == 0 and nothing.details["instance_score_threshold"] == 1.0


def test_instance_raster_is_the_same_written_in_one_strip_or_many(tmp_path):
    import numpy as np
    import rasterio
    from affine import Affine
    from rasterio.crs import CRS

    from geoseg.assemble import write_instance_raster
    from geoseg.instances import Instance
    from geoseg.read import Grid

    from conftest import write_scene

    grid = Grid(CRS.from_epsg(32636).to_wkt(), Affine(0.3, 0, 452_000.0, 0, -0.3, 40_000.0), 50, 70)
    valid = write_scene(tmp_path / "valid.tif", np.ones((1, 70, 50), np.uint8), nodata=0)
    rng = np.random.default_rng(0)
    instances = [Instance(int(r), int(c), rng.random((int(h), int(w))) > 0.3, float(s))
                 for r, c, h, w, s in zip(rng.integers(0, 60, 40), rng.integers(0, 40, 40), rng.integers(1, 25, 40),
                                          rng.integers(1, 10, 40), rng.random(40))]
    rasters = []
    for strip_px in (1024, 7):  # one strip; ten strips, instances crossing several of them
        write_instance_raster(instances, grid, str(valid), str(tmp_path / f"ids{strip_px}.tif"), strip_px=strip_px)
        with rasterio.open(tmp_path / f"ids{strip_px}.tif") as ds:
            rasters.append(ds.read(1))
    assert np.array_equal(*rasters) and len(np.unique(rasters[0])) > 20
