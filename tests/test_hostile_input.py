"""Defects a campaign of hostile inputs found (issue 14): each test reproduces one and failed before its fix.

Scenes here are small real-looking rasters written on the fly; runs are in-process with the pixel stand-in model
(see conftest), so what is tested is reading, naming, publishing and georeferencing, not a network.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from affine import Affine

from geoseg.cli import main
from geoseg.errors import GeosegError
from geoseg.pipeline import RunOptions, run_scene

from conftest import PixelBackend, write_scene


def _pixels(size=64, seed=0):
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 60, (3, size, size)).astype("uint8")
    data[:, size // 4: size // 2, size // 4: size // 2] = 230  # one bright square: one building for the stand-in
    return data


def _run(argv, capsys):
    code = main(argv)
    return code, capsys.readouterr()


def _one_error_line(err: str, message: str) -> None:
    assert err.startswith("geoseg: error: ") and message in err and err.count("\n") == 1, err


# --- 1. catalog build must not delete what -o names ---------------------------------------------------------

def test_catalog_build_refuses_a_folder_that_is_not_its_own_and_keeps_it(tmp_path, capsys):
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    write_scene(scenes / "a.tif", _pixels())
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.txt").write_text("years of work")
    code, out = _run(["catalog", "build", str(scenes), "-o", str(precious)], capsys)
    assert code == 2
    _one_error_line(out.err, "not empty and not a catalog geoseg wrote")
    assert (precious / "thesis.txt").read_text() == "years of work"


def test_catalog_build_never_replaces_the_folder_that_holds_its_inputs(tmp_path, capsys):
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    write_scene(scenes / "a.tif", _pixels())
    assert main(["catalog", "build", str(scenes), "-o", str(tmp_path / "cat")]) == 0
    code, out = _run(["catalog", "build", str(scenes), "-o", str(scenes)], capsys)
    assert code == 2 and "holds the input" in out.err
    code, out = _run(["catalog", "build", str(scenes), "-o", str(tmp_path)], capsys)
    assert code == 2 and "holds the input" in out.err
    assert (scenes / "a.tif").exists()


def test_catalog_build_replaces_its_own_previous_catalog(tmp_path):
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    write_scene(scenes / "a.tif", _pixels())
    assert main(["catalog", "build", str(scenes), "-o", str(tmp_path / "cat")]) == 0
    write_scene(scenes / "b.tif", _pixels())
    assert main(["catalog", "build", str(scenes), "-o", str(tmp_path / "cat")]) == 0
    assert sorted(p.name for p in (tmp_path / "cat").iterdir() if p.is_dir()) == ["a", "b"]


# --- 2, 3. output folder names: safe, unique, never the job's own files ----------------------------------

@pytest.mark.parametrize("item_id", ["..", ".", "stac", "manifest.json", "summary.json", "a/../../x", "", ".hidden"])
def test_item_ids_give_folder_names_that_stay_inside_and_clash_with_nothing(item_id):
    from geoseg.write import safe_folder_name

    reserved = {"stac", "manifest.json", "summary.json", "summary.md"}
    name = safe_folder_name(item_id, reserved)
    assert name not in reserved and not name.startswith(".") and "/" not in name and name
    assert Path("/out", name).resolve().parent == Path("/out")


def test_ids_that_clean_to_the_same_text_get_different_folders():
    from geoseg.write import safe_folder_name

    assert safe_folder_name("x/y") != safe_folder_name("x_y")
    assert safe_folder_name("scene_01") == "scene_01"  # a safe id keeps its name: reruns find their outputs


def test_scenes_sharing_a_file_name_get_distinct_folders(tmp_path):
    from geoseg.write import scene_folder_names

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    names = scene_folder_names([tmp_path / "a" / "scene.tif", tmp_path / "b" / "scene.tif", tmp_path / "other.tif"])
    assert names == ["scene-a", "scene-b", "other"]
    assert scene_folder_names([tmp_path / "...tif"])[0] not in ("..", ".")
    with pytest.raises(GeosegError, match="more than once"):
        scene_folder_names([tmp_path / "a" / "scene.tif", tmp_path / "a" / ".." / "a" / "scene.tif"])


def test_geoseg_run_of_two_scenes_with_one_name_keeps_both(tmp_path, capsys):
    for folder, seed in (("a", 1), ("b", 2)):
        (tmp_path / folder).mkdir()
        write_scene(tmp_path / folder / "scene.tif", _pixels(seed=seed))
    code, out = _run(["run", str(tmp_path / "a" / "scene.tif"), str(tmp_path / "b" / "scene.tif"), "-o",
                      str(tmp_path / "out"), "--workers", "0", "--quiet", "--model", "buildings-fastscnn",
                      "--formats", "geojson"], capsys)
    assert code == 0, out.err
    inputs = {json.loads((tmp_path / "out" / d / "summary.json").read_text())["input"] for d in ("scene-a", "scene-b")}
    assert inputs == {str((tmp_path / "a" / "scene.tif").resolve()), str((tmp_path / "b" / "scene.tif").resolve())}


def test_pipeline_item_ids_cannot_escape_or_clobber_the_job_folder(tmp_path):
    import pystac

    from geoseg.batch import run_job
    from geoseg.job import load_job

    scene = write_scene(tmp_path / "scene.tif", _pixels())
    catalog = pystac.Catalog("c", "hostile ids")
    catalog.set_self_href(str(tmp_path / "catalog" / "catalog.json"))
    for i, item_id in enumerate(("..", ".", "stac", "manifest.json", "x/y", "x_y")):
        item = pystac.Item(item_id, None, None, dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc), {})
        item.add_asset("image", pystac.Asset(str(scene), media_type=pystac.MediaType.GEOTIFF, roles=["data"]))
        catalog.add_item(item)
        item.set_self_href(str(tmp_path / "catalog" / f"item{i}.json"))  # files named safely, ids hostile
    catalog.save(pystac.CatalogType.ABSOLUTE_PUBLISHED)
    out = tmp_path / "jobs" / "out"
    job_file = tmp_path / "job.yaml"
    job_file.write_text(f"name: hostile\ncatalog: {tmp_path / 'catalog' / 'catalog.json'}\nbackend: fastscnn\n"
                        f"output: {{folder: {out}, formats: [geojson]}}\ncluster: {{kind: local, workers: 0}}\n")
    summary = run_job(load_job(job_file), progress=False)
    assert summary["done"] == 6 and summary["failed"] == 0
    assert sorted(p.name for p in (tmp_path / "jobs").iterdir()) == ["out"]  # nothing written beside OUT
    assert json.loads((out / "summary.json").read_text())["job"] == "hostile"
    folders = {row["scene"]: row["folder"] for row in summary["per_scene"]}
    assert len(set(folders.values())) == 6
    assert all((out / f / "mask.tif").exists() for f in folders.values())
    items = list(pystac.Catalog.from_file(str(out / "stac" / "catalog.json")).get_items())
    assert len({i.assets["mask"].get_absolute_href() for i in items}) == 6


# --- 4. options checked before any work -----------------------------------------------------------------

BAD_OPTIONS = [
    (["--workers", "-1"], "--workers"),
    (["--batch", "0"], "--batch"),
    (["--min-area", "-1"], "--min-area"),
    (["--min-area", "nan"], "--min-area"),
    (["--simplify", "nan"], "--simplify"),
    (["--target-gsd", "-1"], "--target-gsd"),
    (["--target-gsd", "0.001"], "--target-gsd"),
    (["--separator-threshold", "5"], "--separator-threshold"),
    (["--building-threshold", "0"], "--building-threshold"),
    (["--building-threshold", "nan"], "--building-threshold"),
    (["--min-confidence", "1.5"], "--min-confidence"),
    (["--min-confidence", "-0.1"], "--min-confidence"),
    (["--min-confidence", "nan"], "--min-confidence"),
    (["--separator-dilate", "-2"], "--separator-dilate"),
    (["--bands", ","], "--bands"),
    (["--tile", "0"], "--tile"),
    (["--overlap", "-4"], "--overlap"),
    (["--chunk", "32"], "--chunk"),
    (["--chunk", "3000"], "--chunk"),
    (["--tau", "0"], "--tau"),
    (["--min-rectangularity", "2"], "--min-rectangularity"),
    (["--device", "potato"], "--device"),
    (["--scheduler", "notaurl"], "--scheduler"),
]


@pytest.mark.parametrize("extra,message", BAD_OPTIONS, ids=[" ".join(c[0]) for c in BAD_OPTIONS])
def test_bad_options_are_one_line_errors_before_any_work(tmp_path, capsys, extra, message):
    scene = write_scene(tmp_path / "scene.tif", _pixels())
    code, out = _run(["run", str(scene), "-o", str(tmp_path / "out"), "--quiet", "--model", "buildings-fastscnn",
                      *(["--workers", "0"] if "--workers" not in extra else []), *extra], capsys)
    assert code == 2
    _one_error_line(out.err, message)
    assert not (tmp_path / "out").exists()


def test_workers_minus_one_does_not_hang(tmp_path):
    scene = write_scene(tmp_path / "scene.tif", _pixels())
    done = subprocess.run([sys.executable, "-m", "geoseg.cli", "run", str(scene), "-o", str(tmp_path / "out"),
                           "--workers", "-1", "--quiet"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--workers" in done.stderr


# --- 5. any CRS: areas and GSD where UTM does not exist ---------------------------------------------------

LOCAL_CRS = ('LOCAL_CS["site grid",LOCAL_DATUM["site",0],UNIT["metre",1,AUTHORITY["EPSG","9001"]],'
             'AXIS["Easting",EAST],AXIS["Northing",NORTH]]')


@pytest.mark.parametrize("crs,transform", [
    ("EPSG:3031", Affine(0.3, 0, 0.0, 0, -0.3, 150_000.0)),  # Antarctic polar stereographic, 1.35 deg from the pole
    ("EPSG:4326", Affine(0.3 / 111_320 / 0.0175, 0, 10.0, 0, -0.3 / 111_320, 89.0)),  # 89 deg N
    ("EPSG:4326", Affine(0.3 / 111_320 / 0.956, 0, 180.0 - 16 * 0.3 / 111_320, 0, -0.3 / 111_320, -17.0)),  # across 180
], ids=["polar-3031", "89N", "antimeridian"])
def test_scenes_where_no_utm_zone_fits_get_areas(tmp_path, crs, transform):
    scene = write_scene(tmp_path / "scene.tif", _pixels(), crs=crs, transform=transform)
    summary = run_scene(scene, tmp_path / "out", RunOptions(workers=0, progress=False, min_area_m2=0, simplify_m=0),
                        backend=PixelBackend())
    frame = gpd.read_file(tmp_path / "out" / "scene" / "buildings.gpkg")
    assert summary.buildings >= 1
    building = frame.sort_values("area_m2").iloc[-1]
    assert building.area_m2 == pytest.approx((16 * 0.3) ** 2, rel=0.1)  # the 16 x 16 px bright square


def test_a_local_engineering_crs_runs_in_its_own_metres(tmp_path, capsys):
    scene = write_scene(tmp_path / "scene.tif", _pixels(), crs=rasterio.crs.CRS.from_wkt(LOCAL_CRS),
                        transform=Affine(0.3, 0, 1000, 0, -0.3, 2000))
    code, out = _run(["run", str(scene), "-o", str(tmp_path / "out"), "--workers", "0", "--quiet",
                      "--model", "buildings-fastscnn"], capsys)
    assert code == 2
    _one_error_line(out.err, "GeoJSON")  # GeoJSON is WGS84: a local grid cannot be placed on the globe
    assert not (tmp_path / "out").exists()
    summary = run_scene(scene, tmp_path / "out", RunOptions(workers=0, progress=False, formats=["gpkg"], min_area_m2=0,
                                                            simplify_m=0), backend=PixelBackend())
    assert summary.source_gsd_m == pytest.approx(0.3)
    frame = gpd.read_file(tmp_path / "out" / "scene" / "buildings.gpkg")
    assert frame.area_m2.max() == pytest.approx((16 * 0.3) ** 2, rel=0.05)


# --- 6, 7. corrupt files and rasters without a geotransform ---------------------------------------------

def _truncated(tmp_path) -> Path:
    big = write_scene(tmp_path / "whole.tif", np.random.default_rng(0).integers(0, 255, (3, 1024, 1024)).astype("uint8"),
                      tiled=True, blockxsize=256, blockysize=256)
    cut = tmp_path / "cut.tif"
    cut.write_bytes(big.read_bytes()[: big.stat().st_size // 2])
    big.unlink()
    return cut


def test_a_truncated_tiff_is_one_line_and_the_other_scenes_go_on(tmp_path, capsys):
    cut = _truncated(tmp_path)
    good = write_scene(tmp_path / "good.tif", _pixels())
    code, out = _run(["run", str(cut), str(good), "-o", str(tmp_path / "out"), "--workers", "0", "--quiet",
                      "--model", "buildings-fastscnn", "--formats", "geojson"], capsys)
    assert code == 2
    assert "Traceback" not in out.err and "cut.tif" in out.err and out.err.count("\n") == 1, out.err
    assert (tmp_path / "out" / "good" / "mask.tif").exists()
    assert not (tmp_path / "out" / "cut").exists()


def test_a_truncated_tiff_in_a_batch_is_bad_input_not_retried(tmp_path):
    from geoseg.batch import run_job
    from geoseg.job import load_job

    folder = tmp_path / "scenes"
    folder.mkdir()
    write_scene(folder / "good.tif", _pixels())
    cut = _truncated(tmp_path)
    assert main(["catalog", "build", str(folder), "-o", str(tmp_path / "cat")]) == 0
    shutil.copy(cut, folder / "good.tif")  # the catalog's scene is corrupted after cataloguing
    job_file = tmp_path / "job.yaml"
    job_file.write_text(f"name: cut\ncatalog: {tmp_path / 'cat' / 'catalog.json'}\nbackend: fastscnn\nretries: 3\n"
                        f"output: {{folder: {tmp_path / 'out'}, formats: [geojson]}}\ncluster: {{kind: local, workers: 0}}\n")
    summary = run_job(load_job(job_file), progress=False)
    row = summary["per_scene"][0]
    assert row["status"] == "failed" and row["attempts"] == 1 and "good.tif" in row["error"]


def test_a_crs_without_a_geotransform_is_refused(tmp_path, capsys):
    path = tmp_path / "nogeo.tif"
    with rasterio.open(path, "w", driver="GTiff", width=32, height=32, count=3, dtype="uint8", crs="EPSG:32636") as dst:
        dst.write(_pixels(32))
    code, out = _run(["run", str(path), "-o", str(tmp_path / "out"), "--workers", "0", "--quiet"], capsys)
    assert code == 2
    _one_error_line(out.err, "no geotransform")


# --- 8. reruns publish only this run's outputs -------------------------------------------------------------

def test_a_rerun_with_fewer_formats_leaves_only_its_own_outputs(tmp_path):
    scene = write_scene(tmp_path / "scene.tif", _pixels())
    opts = RunOptions(workers=0, progress=False, formats=["geojson", "gpkg", "shp"])
    run_scene(scene, tmp_path / "out", opts, backend=PixelBackend())
    (tmp_path / "out" / "scene" / "my-notes.txt").write_text("mine")
    opts.formats = ["geojson"]
    summary = run_scene(scene, tmp_path / "out", opts, backend=PixelBackend())
    left = sorted(p.name for p in (tmp_path / "out" / "scene").iterdir())
    assert left == sorted(summary.outputs + ["summary.json", "my-notes.txt"])


# --- 9. inputs are opened with raster drivers that cannot read other files ------------------------------

def test_a_vrt_that_reads_a_local_file_is_refused(tmp_path, capsys):
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"root:x:0:0:root:/root:/bin/bash\n" * 200)
    vrt = ('<VRTDataset rasterXSize="64" rasterYSize="64"><SRS>EPSG:32636</SRS>'
           '<GeoTransform>452000, 0.3, 0, 40000, 0, -0.3</GeoTransform>'
           '<VRTRasterBand dataType="Byte" band="1" subClass="VRTRawRasterBand">'
           f'<SourceFilename relativetoVRT="0">{secret}</SourceFilename><ImageOffset>0</ImageOffset>'
           '<PixelOffset>1</PixelOffset><LineOffset>64</LineOffset></VRTRasterBand></VRTDataset>')
    for name in ("scene.vrt", "disguised.tif"):
        (tmp_path / name).write_text(vrt)
        code, out = _run(["run", str(tmp_path / name), "-o", str(tmp_path / "out"), "--workers", "0", "--quiet"], capsys)
        assert code == 2
        _one_error_line(out.err, "not accepted")
    assert not (tmp_path / "out").exists()


# --- 10. the smaller ones ---------------------------------------------------------------------------------

def test_a_catalog_that_links_to_itself_is_one_line(tmp_path, capsys):
    (tmp_path / "catalog.json").write_text(json.dumps({
        "type": "Catalog", "stac_version": "1.0.0", "id": "loop", "description": "links to itself",
        "links": [{"rel": "child", "href": "./catalog.json"}, {"rel": "self", "href": str(tmp_path / "catalog.json")}]}))
    job_file = tmp_path / "job.yaml"
    job_file.write_text(f"name: loop\ncatalog: {tmp_path / 'catalog.json'}\n"
                        f"output: {{folder: {tmp_path / 'out'}}}\ncluster: {{kind: local, workers: 0}}\n")
    code, out = _run(["pipeline", "run", str(job_file), "--quiet"], capsys)
    assert code == 2
    _one_error_line(out.err, "(a cycle)")


def test_staging_folders_of_a_killed_run_are_removed_by_the_next(tmp_path):
    scene = write_scene(tmp_path / "scene.tif", _pixels())
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a process id that no longer runs
    leftover = tmp_path / "out" / "scene" / f".geoseg-partial-{dead.pid}"
    leftover.mkdir(parents=True)
    (leftover / "mask.raw.tif").write_bytes(b"x" * 100)
    run_scene(scene, tmp_path / "out", RunOptions(workers=0, progress=False), backend=PixelBackend())
    assert not leftover.exists()


@pytest.mark.parametrize("card_text,message", [
    ("{not json", "not a valid model card"),
    (None, "not a valid model card"),  # valid JSON, but the building class is not one of its classes
])
def test_a_broken_model_card_is_one_line(tmp_path, capsys, card_text, message):
    from importlib import resources

    shipped = Path(str(resources.files("geoseg.models"))) / "buildings-fastscnn.safetensors"
    weights = tmp_path / "broken.safetensors"
    shutil.copy(shipped, weights)
    if card_text is None:
        card = json.loads(shipped.with_suffix(".json").read_text())
        card["building_class"] = 7
        card_text = json.dumps(card)
    weights.with_suffix(".json").write_text(card_text)
    scene = write_scene(tmp_path / "scene.tif", _pixels())
    code, out = _run(["run", str(scene), "-o", str(tmp_path / "out"), "--workers", "0", "--quiet", "--model",
                      str(weights)], capsys)
    assert code == 2
    _one_error_line(out.err, message)


def test_complex_and_palette_rasters_are_refused_with_a_reason(tmp_path, capsys):
    complex_path = write_scene(tmp_path / "complex.tif", (_pixels() + 1j).astype("complex64"))
    palette_path = tmp_path / "palette.tif"
    with rasterio.open(palette_path, "w", driver="GTiff", width=64, height=64, count=1, dtype="uint8",
                       crs="EPSG:32636", transform=Affine(0.3, 0, 452_000, 0, -0.3, 40_000)) as dst:
        dst.write(_pixels()[:1])
        dst.write_colormap(1, {i: (i, 255 - i, 0, 255) for i in range(256)})
    for path, message in ((complex_path, "complex"), (palette_path, "palette")):
        code, out = _run(["run", str(path), "-o", str(tmp_path / "out"), "--workers", "0", "--quiet"], capsys)
        assert code == 2
        _one_error_line(out.err, message)


def test_a_full_disk_is_one_line(tmp_path, capsys):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    scene = write_scene(tmp_path / "scene.tif", _pixels())
    code, out = _run(["evaluate", str(scene), "--reference", str(scene), "--json", "/dev/full"], capsys)
    assert code != 0 and "Traceback" not in out.err
    _one_error_line(out.err, "No space left on device")


# --- found while making the real demo: masks must survive resampling --------------------------------------

@pytest.mark.parametrize("kind", ["internal mask", "alpha band", "nodata value"])
def test_masked_ground_stays_nodata_when_the_scene_is_resampled(tmp_path, kind):
    """A 0.15 m scene (resampled on read to the model's 0.3 m) whose left half is masked: no pixel of the masked
    half may be predicted (mask.tif 255 there), however the mask is stored."""
    data = _pixels(128)
    data[:, :, :64] = 0
    transform = Affine(0.15, 0, 452_000, 0, -0.15, 40_000)
    path = tmp_path / "scene.tif"
    if kind == "alpha band":
        alpha = np.where(np.arange(128) < 64, 0, 255).astype("uint8")[None, None, :].repeat(128, 1)
        write_scene(path, np.concatenate([data, alpha]), transform=transform, photometric="RGB", extra_samples=2)
        with rasterio.open(path, "r+") as dst:
            dst.colorinterp = [rasterio.enums.ColorInterp.red, rasterio.enums.ColorInterp.green,
                               rasterio.enums.ColorInterp.blue, rasterio.enums.ColorInterp.alpha]
    elif kind == "internal mask":
        with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
            write_scene(path, data, transform=transform)
            with rasterio.open(path, "r+") as dst:
                dst.write_mask(np.where(np.arange(128) < 64, 0, 255).astype("uint8")[None, :].repeat(128, 0))
    else:
        write_scene(path, data, transform=transform, nodata=0)
    summary = run_scene(path, tmp_path / "out", RunOptions(workers=0, progress=False), backend=PixelBackend())
    assert summary.resampled
    with rasterio.open(tmp_path / "out" / "scene" / "mask.tif") as mask:
        labels = mask.read(1)
    assert (labels[:, :31] == 255).all() and (labels[:, 33:] != 255).all()


def test_running_out_of_space_mid_run_is_one_line_and_leaves_nothing(tmp_path):
    """Files may not grow past 60 kB (RLIMIT_FSIZE, the signal ignored: writes fail as on a full disk)."""
    import resource
    import signal

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (60_000, 60_000))

    scene = write_scene(tmp_path / "scene.tif", np.random.default_rng(0).integers(0, 255, (3, 400, 400)).astype("uint8"))
    done = subprocess.run([sys.executable, "-m", "geoseg.cli", "run", str(scene), "-o", str(tmp_path / "out"),
                           "--workers", "0", "--quiet", "--model", "buildings-fastscnn"],
                          preexec_fn=limit, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    # libtiff prints its own "_tiffWriteProc: File too large." lines straight to stderr; geoseg's is one line,
    # naming the file that could not be written and why (the first write past 60 kB may be any of the run's)
    last = done.stderr.splitlines()[-1]
    assert last.startswith("geoseg: error: ") and str(tmp_path / "out") in last, done.stderr
    assert "too large" in last or "Write failed" in last, done.stderr
    assert sum(line.startswith("geoseg") for line in done.stderr.splitlines()) == 1
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*"))


@pytest.mark.parametrize("precision", ["fp32", "auto"])
def test_the_summary_says_which_precision_the_workers_used(tmp_path, precision):
    from geoseg.model import bf16_is_fast

    scene = write_scene(tmp_path / "scene.tif", _pixels())
    summary = run_scene(scene, tmp_path / "out", RunOptions(workers=0, progress=False, precision=precision,
                                                            backend="fastscnn", formats=["gpkg"]))
    expected = "bf16" if precision == "auto" and bf16_is_fast() else "fp32"
    assert summary.precision == precision and summary.precision_used == expected


def test_missing_scenes_start_no_cluster_even_when_port_8787_is_taken(tmp_path):
    """Another cluster's dashboard on 8787 made Dask warn on stderr; a missing file started a cluster for nothing."""
    import socket

    with socket.socket() as holder:
        try:
            holder.bind(("", 8787))
        except OSError:
            pass  # someone holds it already: the condition under test
        done = subprocess.run([sys.executable, "-m", "geoseg.cli", "run", str(tmp_path / "nope.tif"),
                               str(tmp_path / "gone.tif"), "-o", str(tmp_path / "out")],
                              capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [f"geoseg: error: {tmp_path / n}: no such file" for n in ("nope.tif", "gone.tif")]
