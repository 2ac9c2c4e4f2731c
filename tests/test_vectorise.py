"""Polygons: one per building across tile and window borders, areas in m2, every format readable and right."""

import json

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from affine import Affine

from geoseg.pipeline import run_scene
from geoseg.read import Grid
from geoseg.georeference import pieces_to_frame
from geoseg.vectorise import VectorParams, merge_border_pieces, building_pieces

from conftest import PixelBackend, write_scene


def bright_rectangles(height, width, rects):
    """uint8 RGB scene: dark ground (20), rectangles (r0, c0, r1, c1) bright (230). With rectangles over 2 % of
    the scene, the 2-98 % stretch maps ground to 0 and roofs to 1."""
    data = np.full((3, height, width), 20, np.uint8)
    for r0, c0, r1, c1 in rects:
        data[:, r0:r1, c0:c1] = 230
    return data


def test_building_across_tile_border_is_one_polygon_with_right_area(tmp_path, fast_options):
    # tile 128, overlap 32: tile columns start at 0, 96, 192... -> the rectangle spans three tiles' borders
    rect = (40, 70, 80, 230)  # 40 rows x 160 cols at 0.3 m = 12 m x 48 m = 576 m2
    scene = write_scene(tmp_path / "scene.tif", bright_rectangles(256, 320, [rect]))
    summary = run_scene(scene, tmp_path / "out", fast_options, backend=PixelBackend())
    frame = gpd.read_parquet(tmp_path / "out" / "scene" / "buildings.parquet")
    assert summary.buildings == len(frame) == 1
    assert frame.area_m2[0] == pytest.approx(576.0, rel=1e-3)
    assert frame.geometry[0].area == pytest.approx(576.0, rel=1e-3)  # native UTM CRS, metres
    assert frame.confidence[0] == pytest.approx(1.0, abs=0.01)


def test_pieces_merge_across_window_borders_but_not_at_corners(tmp_path):
    # a U-shape crossing window borders several times, and two squares touching only at a corner across a border
    height, width = 200, 200
    mask = np.zeros((height, width), np.uint8)
    mask[10:90, 10:30] = 1
    mask[70:90, 10:150] = 1
    mask[10:90, 130:150] = 1
    mask[120:128, 120:128] = 1  # corner-touching pair at the window corner (128, 128)
    mask[128:136, 128:136] = 1
    grid = Grid(rasterio.crs.CRS.from_epsg(32636).to_wkt(), Affine(0.5, 0, 452_000, 0, -0.5, 40_000), width, height)
    paths = {}
    for name, arr in (("mask", mask), ("prob", mask * 200)):
        paths[name] = str(write_scene(tmp_path / f"{name}.tif", arr[None].astype(np.uint8), gsd_m=0.5))
    pieces = building_pieces(paths["mask"], paths["prob"], grid, VectorParams(1), window_px=64)
    polygons = sorted(pieces, key=lambda p: -p.pixels)
    assert len(pieces) == 3
    assert polygons[0].pixels == int(mask[:100].sum()) and polygons[0].polygon.area == polygons[0].pixels
    assert isinstance(polygons[0].polygon, shapely.Polygon)
    whole = building_pieces(paths["mask"], paths["prob"], grid, VectorParams(1), window_px=4096)
    assert sorted(p.pixels for p in whole) == sorted(p.pixels for p in pieces)
    frame = pieces_to_frame(pieces, grid, gsd_m=0.5)
    assert list(frame.id) == [1, 2, 3]
    assert frame.area_m2.sum() == pytest.approx(mask.sum() * 0.25)


def test_merge_is_union_find_not_pairwise():
    # a chain a-b-c where a and c do not touch still becomes one polygon
    boxes = [shapely.box(0, 0, 10, 10), shapely.box(10, 0, 20, 10), shapely.box(20, 0, 30, 10)]
    from geoseg.vectorise import Piece

    merged = merge_border_pieces([Piece(b, 100.0, 100) for b in reversed(boxes)])
    assert len(merged) == 1 and merged[0].polygon.area == 300 and merged[0].pixels == 300


def test_geographic_scene_gets_metric_areas_and_all_formats(tmp_path, fast_options):
    gsd_deg = 0.3 / 111_320  # ~0.3 m at the equator, so no resampling
    transform = Affine(gsd_deg, 0, 32.58, 0, -gsd_deg, 0.01)
    rects = [(20, 20, 60, 80), (100, 150, 140, 250)]
    scene = write_scene(tmp_path / "geo.tif", bright_rectangles(200, 300, rects), crs="EPSG:4326", transform=transform)
    fast_options.min_area_m2 = 250.0  # keeps only the second (40 x 100 px = 360 m2), drops the first (216 m2)
    summary = run_scene(scene, tmp_path / "out", fast_options, backend=PixelBackend())
    out = tmp_path / "out" / "geo"
    assert summary.buildings == 1 and not summary.resampled
    for name in ("buildings.geojson", "buildings.gpkg", "buildings.shp", "buildings.parquet"):
        frame = gpd.read_file(out / name) if not name.endswith("parquet") else gpd.read_parquet(out / name)
        assert len(frame) == 1 and {"id", "confidence", "area_m2"} <= set(frame.columns)
        assert frame.area_m2[0] == pytest.approx(360.0, rel=0.01)
        assert frame.crs.to_epsg() == 4326
    geojson = json.loads((out / "buildings.geojson").read_text())
    assert "crs" not in geojson  # RFC 7946: always WGS84 lon/lat, no crs member
    lon, lat = geojson["features"][0]["geometry"]["coordinates"][0][0]
    assert 32.58 < lon < 32.59 and 0.0 < lat < 0.01
    with rasterio.open(out / "mask.tif") as mask:
        assert mask.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert mask.compression.name.lower() == "deflate"


def test_no_buildings_still_writes_valid_empty_layers(tmp_path, fast_options):
    scene = write_scene(tmp_path / "empty.tif", bright_rectangles(100, 100, []))
    summary = run_scene(scene, tmp_path / "out", fast_options, backend=PixelBackend())
    assert summary.buildings == 0
    for name in ("buildings.geojson", "buildings.gpkg", "buildings.shp"):
        assert pyogrio.read_info(tmp_path / "out" / "empty" / name)["features"] == 0
    assert len(gpd.read_parquet(tmp_path / "out" / "empty" / "buildings.parquet")) == 0


def test_specks_are_dropped_early_but_border_pieces_are_kept(tmp_path):
    mask = np.zeros((128, 128), np.uint8)
    mask[10, 10] = 1  # a one-pixel speck inside a window
    mask[20:30, 20:30] = 1  # a real building
    mask[62:66, 100:101] = 1  # 4 pixels split 2 + 2 by the window border at row 64: kept until merged
    grid = Grid(rasterio.crs.CRS.from_epsg(32636).to_wkt(), Affine(0.5, 0, 452_000, 0, -0.5, 40_000), 128, 128)
    paths = {}
    for name, arr in (("mask", mask), ("prob", mask * 200)):
        paths[name] = str(write_scene(tmp_path / f"{name}.tif", arr[None].astype(np.uint8), gsd_m=0.5))
    pieces = building_pieces(paths["mask"], paths["prob"], grid, VectorParams(1, min_pixels=3), window_px=64)
    assert sorted(p.pixels for p in pieces) == [4, 100]


def test_regularised_outlines_are_right_angled_and_the_shape_filter_drops_round_blobs(tmp_path):
    """A tilted, ragged rectangle comes out with right angles; a disc (a tree crown) is dropped by
    --min-rectangularity 0.85 while the rectangle stays (the pixel stand-in outlines bright pixels)."""
    import geopandas as gpd
    import shapely
    from rasterio.features import rasterize

    from geoseg.outline import rectangularity
    from geoseg.pipeline import RunOptions, run_scene

    from conftest import PixelBackend, write_scene

    rect = shapely.affinity.rotate(shapely.box(40, 60, 100, 100), 25, origin="centroid")
    disc = shapely.Point(170, 170).buffer(18)
    mask = rasterize([(rect, 1), (disc, 1)], out_shape=(240, 240)).astype(bool)
    data = np.where(mask, 240, 20).astype("uint8")[None].repeat(3, 0)
    scene = write_scene(tmp_path / "scene.tif", data)
    base = dict(workers=0, progress=False, formats=["gpkg"], min_area_m2=1.0)
    plain = run_scene(scene, tmp_path / "plain", RunOptions(**base), backend=PixelBackend())
    shaped = run_scene(scene, tmp_path / "shaped", RunOptions(**base, regularise=True, min_rectangularity=0.85),
                       backend=PixelBackend())
    assert plain.buildings == 2 and shaped.buildings == 1 and shaped.regularise is True
    outline = gpd.read_file(tmp_path / "shaped" / "scene" / "buildings.gpkg").geometry.iloc[0]
    ring = np.asarray(outline.exterior.coords)[:-1]
    edges = np.roll(ring, -1, axis=0) - ring
    cosines = [abs(np.dot(a, b)) / (np.linalg.norm(a) * np.linalg.norm(b)) for a, b in zip(edges, np.roll(edges, -1, 0))]
    assert max(cosines) < 0.05  # every corner within 3 degrees of square
    assert rectangularity([outline])[0] > 0.97 and outline.area == pytest.approx(60 * 40 * 0.09, rel=0.1)


def test_polygons_are_georeferenced_exactly_as_shapely_would_one_by_one():
    # georeference maps all polygons in one call (issue 27); the coordinates must be those of
    # shapely.affinity.affine_transform to the last bit, and invalid outlines still repaired
    import shapely
    from affine import Affine

    from geoseg.georeference import _to_grid_crs

    t = Affine(0.29999999, 0.0, 500123.123, 0.0, -0.30000001, 8387969.987)
    polygons = [shapely.box(i, 2 * i, i + 3.5, 2 * i + 7) for i in range(50)]
    polygons.append(shapely.Polygon([(0, 0), (4, 4), (4, 0), (0, 4)]))  # a bow tie
    mapped = _to_grid_crs(polygons, t)
    for i, p in enumerate(polygons[:-1]):
        one = shapely.affinity.affine_transform(p, [t.a, t.b, t.d, t.e, t.c, t.f])
        assert mapped[i].equals_exact(one, 0.0)
    assert mapped[-1].is_valid and mapped[-1].area > 0
