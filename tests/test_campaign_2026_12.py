"""The reliability and security campaign of 2026-12 (issue 25, ``../shared/reports/reliability-campaign-2026-12.md``):
one test (or more) per defect, each failing on 036dc9a, plus the campaign's observations that were fixed.

Scenes are small rasters written on the fly; runs are in-process with the pixel stand-in model or Fast-SCNN, and on
a real LocalCluster where the defect lived on the worker side.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import pystac
import pytest
import rasterio
import shapely
import yaml
from shapely.geometry import box

from conftest import PixelBackend, write_scene
from geoseg.cli import main
from geoseg.errors import GeosegError
from geoseg.pipeline import RunOptions, run_scene

GEOSEG = [sys.executable, "-m", "geoseg.cli"]


def _pixels(size=64, seed=0):
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 60, (3, size, size)).astype("uint8")
    data[:, size // 4: size // 2, size // 4: size // 2] = 230  # one bright square: one building for the stand-in
    return data


def _one_error_line(err: str, message: str) -> None:
    assert err.startswith("geoseg: error: ") and message in err and err.count("\n") == 1, err


def _catalog(folder: Path, items: dict[str, str], kind: str = "Catalog") -> Path:
    """A STAC catalog in ``folder`` with one item per ``id -> asset href`` (item files named safely)."""
    folder.mkdir(parents=True, exist_ok=True)
    catalog = pystac.Catalog("c", "campaign")
    catalog.set_self_href(str(folder / "catalog.json"))
    for i, (item_id, href) in enumerate(items.items()):
        item = pystac.Item(item_id, None, None, dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc), {})
        item.add_asset("image", pystac.Asset(href, media_type=pystac.MediaType.GEOTIFF, roles=["data"]))
        catalog.add_item(item)
        item.set_self_href(str(folder / f"item{i}.json"))
    catalog.save(pystac.CatalogType.ABSOLUTE_PUBLISHED)
    return folder / "catalog.json"


def _job(path: Path, catalog: Path, out: Path, **fields) -> Path:
    job = {"name": "campaign", "catalog": str(catalog), "backend": "fastscnn",
           "output": {"folder": str(out), "formats": ["geojson"]}, "cluster": {"kind": "local", "workers": 0}}
    job.update(fields)
    path.write_text(yaml.safe_dump(job))
    return path


# --- HIGH-1: result STAC items laid out under raw item ids -----------------------------------------------------

def test_result_catalog_items_never_leave_the_output_folder(tmp_path):
    from geoseg.batch import run_job
    from geoseg.job import load_job

    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "settings.json").write_text('{"precious": true}')
    scene = write_scene(tmp_path / "s.tif", _pixels())
    hostile = {str(victim / "settings"): str(scene), "../../../x": str(scene), "..": str(scene)}
    out = tmp_path / "a" / "b" / "c" / "out"
    summary = run_job(load_job(_job(tmp_path / "job.yaml", _catalog(tmp_path / "cat", hostile), out)), progress=False)
    assert summary["done"] == 3
    assert json.loads((victim / "settings.json").read_text()) == {"precious": True}
    assert not (tmp_path / "x.json").exists() and not (tmp_path / "a" / "x.json").exists()
    written = {p.resolve() for p in tmp_path.rglob("*.json")} - {p.resolve() for p in (tmp_path / "cat").glob("*.json")}
    assert all(out.resolve() in p.parents for p in written - {(victim / "settings.json").resolve()}), written
    items = list(pystac.Catalog.from_file(str(out / "stac" / "catalog.json")).get_items())
    assert sorted(i.properties["geoseg:source_id"] for i in items) == sorted(hostile)
    for item in items:
        assert (out / "stac").resolve() in Path(item.get_self_href()).resolve().parents


# --- HIGH-2: sidecar files (.ovr VRT, .msk, .aux.xml) read beside the scene ----------------------------------------

def _secret_overview(tmp_path: Path) -> tuple[Path, bytes]:
    """A 2048 px scene whose ``scene.tif.ovr`` is a VRT that reads a local 'secret' file into every band."""
    secret = bytes(range(256)) * 4096  # 1 MiB: the overview's 1024 x 1024 bytes
    (tmp_path / "secret.bin").write_bytes(secret)
    scene = write_scene(tmp_path / "scene.tif", np.full((3, 2048, 2048), 90, np.uint8), tiled=True)
    band = lambda b: (f'<VRTRasterBand dataType="Byte" band="{b}" subClass="VRTRawRasterBand"><SourceFilename '  # noqa: E731
                      f'relativetoVRT="0">{tmp_path / "secret.bin"}</SourceFilename><ImageOffset>0</ImageOffset>'
                      '<PixelOffset>1</PixelOffset><LineOffset>1024</LineOffset></VRTRasterBand>')
    (tmp_path / "scene.tif.ovr").write_text('<VRTDataset rasterXSize="1024" rasterYSize="1024">'
                                           + "".join(band(b) for b in (1, 2, 3)) + "</VRTDataset>")
    with rasterio.open(scene) as plain:  # what GDAL does when left to itself: the defect
        assert plain.overviews(1) == [2]
    return scene, secret


def test_an_overview_sidecar_is_not_read(tmp_path):
    from geoseg.read import open_raster
    from geoseg.scene import open_scene

    scene, secret = _secret_overview(tmp_path)
    with open_raster(str(scene)) as src:
        assert src.overviews(1) == [] and len(src.files) == 1
    raw, valid = open_scene(scene, model_gsd_m=0.3, n_model_bands=3).overview
    assert valid.all() and (raw == 90).all()  # the scene's own pixels, not the secret's bytes


def test_an_overview_sidecar_cannot_reach_the_stretch_or_the_preview(tmp_path):
    from PIL import Image

    (tmp_path / "plain").mkdir()
    (tmp_path / "with-sidecar").mkdir()
    previews = []
    for folder in ("plain", "with-sidecar"):
        scene, _ = _secret_overview(tmp_path / folder)
        if folder == "plain":
            (tmp_path / folder / "scene.tif.ovr").unlink()
        run_scene(scene, tmp_path / folder / "out", RunOptions(workers=0, progress=False, formats=["geojson"]),
                  backend=PixelBackend())
        previews.append(np.asarray(Image.open(tmp_path / folder / "out" / "scene" / "preview.png")))
    assert (previews[0] == previews[1]).all()


@pytest.mark.parametrize("sidecar", ["msk", "aux.xml"])
def test_mask_and_metadata_sidecars_are_not_read(tmp_path, sidecar):
    from geoseg.read import open_raster

    path = tmp_path / "scene.tif"
    if sidecar == "msk":  # everything masked by a sidecar mask: the scene would be all nodata
        with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=False):
            write_scene(path, _pixels())
            with rasterio.open(path, "r+") as dst:
                dst.write_mask(np.zeros((64, 64), np.uint8))
        assert (tmp_path / "scene.tif.msk").exists()
    else:
        write_scene(path, _pixels())
        (tmp_path / "scene.tif.aux.xml").write_text('<PAMDataset><Metadata><MDI key="INJECTED">1</MDI></Metadata>'
                                                    '</PAMDataset>')
    with open_raster(str(path)) as src:
        assert src.files == [str(path)]
        assert "INJECTED" not in src.tags()
        assert src.read_masks(1).min() == 255


def test_an_envi_scene_opens_with_its_header_and_nothing_else(tmp_path):
    """ENVI keeps its header in NAME.hdr: that one sidecar is read; an overview beside it is still refused."""
    from geoseg.read import open_raster

    path = tmp_path / "scene.bin"
    with rasterio.open(path, "w", driver="ENVI", width=64, height=64, count=3, dtype="uint8", crs="EPSG:32636",
                       transform=rasterio.transform.from_origin(452_000, 40_000, 0.3, 0.3)) as dst:
        dst.write(_pixels())
    with open_raster(str(path)) as src:
        assert src.driver == "ENVI" and sorted(Path(f).name for f in src.files) == ["scene.bin", "scene.hdr"]
    (tmp_path / "scene.bin.aux.xml").write_text('<PAMDataset><Metadata><MDI key="X">1</MDI></Metadata></PAMDataset>')
    with pytest.raises(GeosegError, match="scene.bin.aux.xml beside it"):
        open_raster(str(path))


def test_a_png_georeferenced_by_its_world_file_opens(tmp_path):
    from geoseg.read import open_raster

    path = tmp_path / "scene.png"
    with rasterio.open(path, "w", driver="PNG", width=64, height=64, count=3, dtype="uint8") as dst:
        dst.write(_pixels())
    (tmp_path / "scene.pgw").write_text("0.3\n0\n0\n-0.3\n452000.15\n39999.85\n")
    with open_raster(str(path)) as src:
        assert src.transform.a == pytest.approx(0.3) and src.transform.c == pytest.approx(452_000)


# --- MEDIUM-3: errors raised on Dask workers lose their type ---------------------------------------------------

def _cog_with_its_tail_cut(folder: Path) -> Path:
    """A COG whose overviews (stored first) are intact and whose full-resolution tail is gone: the driver's
    overview read succeeds, a worker's tile read fails (an interrupted download)."""
    import rasterio.shutil

    plain = write_scene(folder.parent / "plain.tif", np.random.default_rng(1).integers(0, 255, (3, 2048, 2048)).astype("uint8"),
                        tiled=True)  # over 1024 px: the driver reads the overview, not the full resolution
    bad = folder / "bad.tif"
    rasterio.shutil.copy(plain, bad, driver="COG", COMPRESS="DEFLATE", BLOCKSIZE=256)
    os.truncate(bad, int(os.path.getsize(bad) * 0.8))
    return bad


def test_a_corrupt_scene_found_on_a_worker_is_bad_input_not_retried(tmp_path):
    from geoseg.batch import run_job
    from geoseg.job import load_job

    scenes = tmp_path / "scenes"
    scenes.mkdir()
    good = write_scene(scenes / "good.tif", _pixels())
    bad = _cog_with_its_tail_cut(scenes)
    job = _job(tmp_path / "job.yaml", _catalog(tmp_path / "cat", {"good": str(good), "bad": str(bad)}),
               tmp_path / "out", retries=2, cluster={"kind": "local", "workers": 1},
               tiling={"tile_px": 256, "overlap_px": 32, "batch_tiles": 2})
    summary = run_job(load_job(job), progress=False)
    rows = {r["scene"]: r for r in summary["per_scene"]}
    assert rows["good"]["status"] == "done"
    assert rows["bad"]["status"] == "failed" and rows["bad"]["attempts"] == 1, rows["bad"]
    assert rows["bad"]["error"].startswith(str(bad)) and "Exception" not in rows["bad"]["error"]


def test_the_task_boundary_keeps_types_that_dask_can_send(tmp_path):
    """What Dask does with a task's exception (tblib pickles the chain; anything that fails to load becomes a bare
    Exception): a GeosegError raised while a GDAL error was handled, and GDAL's and OGR's write errors."""
    import pickle

    import pyogrio.errors
    import tblib.pickling_support
    from rasterio._err import CPLE_AppDefinedError

    from geoseg.boundary import run_task

    def corrupt():
        try:
            raise CPLE_AppDefinedError(1, 1, "TIFFReadEncodedTile() failed")
        except CPLE_AppDefinedError:
            raise GeosegError("scene.tif: cannot read the window at row 0") from None

    def full_gpkg():
        raise pyogrio.errors.FeatureError("failed to write: database or disk is full")

    for fn, kind, text in ((corrupt, GeosegError, "cannot read the window"), (full_gpkg, OSError, "disk is full")):
        with pytest.raises(Exception) as caught:
            run_task(fn)
        err = caught.value
        tblib.pickling_support.install(err)
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is kind and text in str(back) and back.__context__ is None


def _limited(size_bytes):
    def limit():
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size_bytes, size_bytes))
    return limit


def test_a_full_disk_on_a_worker_reaches_the_driver_as_an_oserror(capfd):
    """A raster piece written on a real worker to /dev/full (every write: no space left on device): the driver
    gets an OSError, which ``geoseg run`` prints as one line with exit 1, and the worker logs no traceback."""
    from affine import Affine
    from rasterio.windows import Window

    from geoseg.cluster import dask_client, runner_for
    from geoseg.read import Grid
    from geoseg.stitch import write_piece

    grid = Grid(rasterio.crs.CRS.from_epsg(32636).to_wkt(), Affine(0.3, 0, 452_000, 0, -0.3, 40_000), 1024, 1024)
    noise = np.random.default_rng(0).integers(0, 255, (1024, 1024)).astype(np.uint8)
    with dask_client(1, None) as client:
        future = runner_for(client).submit(write_piece, "/dev/full", noise, grid, Window(0, 0, 1024, 1024), None)
        with pytest.raises(OSError, match="Write failed"):
            future.result()
        time.sleep(0.5)  # the worker's log line, if any, reaches stderr
    assert "Compute Failed" not in capfd.readouterr().err


@pytest.fixture(scope="module")
def banepa_crop(tmp_path_factory):
    """The campaign's scene for a full disk: a 2048 px crop of Banepa (real data; skipped without it)."""
    from conftest import SHARED_DATA

    source = SHARED_DATA / "buildings" / "banepa" / "image.tif"
    if not source.exists():
        pytest.skip(f"real data {source} is absent")
    with rasterio.open(source) as src:
        pixels = src.read()[:, :2048, :2048]
    return write_scene(tmp_path_factory.mktemp("banepa") / "t0.tif", pixels, crs="EPSG:32645",
                       transform=rasterio.transform.from_origin(340000, 3060000, 0.3, 0.3), tiled=True, compress="deflate")


@pytest.mark.parametrize("size_mib", [13, 16])
def test_a_full_disk_in_process_is_one_line_at_every_stage(tmp_path, banepa_crop, size_mib):
    """The campaign's sizes: at 13 MiB the COG assembly fails (GDAL's CPLE_AppDefinedError), at 16 MiB the
    GeoPackage (pyogrio's FeatureError); each must be one line, exit 1, nothing left. A real tmpfs of that size."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(disk)],
                                           capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root and a system that allows it")
    try:
        done = subprocess.run(GEOSEG + ["run", str(banepa_crop), "-o", str(disk / "o"), "--backend", "fastscnn",
                                        "--workers", "0", "--quiet"], capture_output=True, text=True, timeout=300)
        left = list((disk / "o").rglob("*")) if (disk / "o").exists() else []
    finally:
        subprocess.run(["umount", str(disk)], check=False)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.splitlines()[-1].startswith("geoseg: error: ")
    assert sum(line.startswith("geoseg") for line in done.stderr.splitlines()) == 1
    assert not [p for p in left if p.is_file()]


# --- MEDIUM-4: --regularise undone for a whole batch by one split building -----------------------------------

#: a real outline (Banepa, pixel coordinates) that buildingregulariser 0.2.5 splits in two
SPLITS = shapely.from_wkt(
    "POLYGON ((6 0, 6 1, 5 1, 5 2, 4 2, 4 3, 3 3, 3 4, 2 4, 2 5, 1 5, 1 6, 0 6, 0 7, 2 7, 2 8, 3 8, 3 9, 5 9, 5 10, "
    "6 10, 6 11, 7 11, 7 12, 8 12, 8 13, 9 13, 9 15, 10 15, 10 16, 11 16, 11 17, 12 17, 12 18, 13 18, 13 19, 14 19, "
    "14 23, 13 23, 13 24, 12 24, 12 26, 11 26, 11 27, 10 27, 10 28, 9 28, 9 29, 8 29, 8 32, 7 32, 7 38, 6 38, 6 40, "
    "7 40, 7 41, 8 41, 8 42, 10 42, 10 43, 12 43, 12 44, 14 44, 14 43, 15 43, 15 42, 16 42, 16 41, 17 41, 17 40, "
    "18 40, 18 39, 19 39, 19 38, 20 38, 20 35, 19 35, 19 32, 18 32, 18 30, 17 30, 17 26, 22 26, 22 25, 25 25, 25 24, "
    "27 24, 27 23, 28 23, 28 22, 29 22, 29 21, 30 21, 30 20, 31 20, 31 19, 30 19, 30 17, 29 17, 29 16, 28 16, 28 15, "
    "27 15, 27 14, 26 14, 26 13, 25 13, 25 12, 24 12, 24 11, 22 11, 22 10, 17 10, 17 9, 16 9, 16 8, 15 8, 15 6, "
    "14 6, 14 5, 13 5, 13 4, 12 4, 12 3, 11 3, 11 2, 9 2, 9 1, 7 1, 7 0, 6 0))")


def _staircase(polygon) -> bool:
    dx, dy = np.abs(np.diff(np.asarray(polygon.exterior.coords), axis=0)).T
    return bool(((dx < 1e-9) | (dy < 1e-9)).all())


def test_one_split_building_does_not_undo_the_others():
    from geoseg.outline import regularise_px

    from affine import Affine
    from rasterio.features import rasterize

    from geoseg.trace import label_polygons

    rectangle = shapely.affinity.rotate(box(10, 10, 40, 25), 17, origin=(10, 10))
    [stairs] = label_polygons(rasterize([rectangle], out_shape=(60, 60)), Affine.identity())[1]  # as pixels give it
    assert _staircase(stairs)
    batch = [shapely.affinity.translate(SPLITS, 200, 0), stairs]
    shaped = regularise_px(batch, gsd_m=0.3, simplify_m=0.25)
    assert len(shaped) == 2 and all(p.geom_type == "Polygon" and p.is_valid for p in shaped)
    assert shaped[1].equals(regularise_px([stairs], 0.3, 0.25)[0])  # as if alone: batches do not matter
    assert not _staircase(shaped[0]) and not _staircase(shaped[1])
    assert shapely.intersection(shaped[0], batch[0]).area > 0.8 * batch[0].area


def test_invalid_outlines_are_repaired_before_they_are_written():
    from geoseg.read import Grid
    from geoseg.georeference import georeference

    bowtie = shapely.Polygon([(0, 0), (10, 10), (10, 0), (0, 10)])
    grid = Grid(rasterio.crs.CRS.from_epsg(32636).to_wkt(), rasterio.Affine(0.3, 0, 452_000, 0, -0.3, 40_000), 64, 64)
    frame, _ = georeference([bowtie, box(20, 20, 30, 30)], {}, grid, gsd_m=0.3)
    assert frame.geometry.is_valid.all() and len(frame) == 2


# --- MEDIUM-5: an asset on /dev/zero or a FIFO hangs the job ----------------------------------------------------

def test_a_device_or_a_fifo_asset_fails_its_scene_and_the_job_goes_on(tmp_path):
    from geoseg.batch import LOCK, run_job
    from geoseg.job import load_job

    fifo = tmp_path / "pipe.tif"
    os.mkfifo(fifo)
    good = write_scene(tmp_path / "good.tif", _pixels())
    out = tmp_path / "out"
    job = load_job(_job(tmp_path / "job.yaml",
                        _catalog(tmp_path / "cat", {"ok": str(good), "zero": "/dev/zero", "fifo": str(fifo)}), out))
    result = {}
    worker = threading.Thread(target=lambda: result.update(run_job(job, progress=False)), daemon=True)
    worker.start()
    worker.join(120)
    if worker.is_alive():
        with open(fifo, "wb"):  # let a read that blocks on the FIFO end, so the test process can too
            pass
        pytest.fail("the job still hangs on /dev/zero or the FIFO after 120 s")
    rows = {r["scene"]: r for r in result["per_scene"]}
    assert rows["ok"]["status"] == "done"
    for bad in ("zero", "fifo"):
        assert rows[bad]["status"] == "failed" and "not a regular file" in rows[bad]["error"]
    assert not (out / LOCK).exists()


# --- MEDIUM-6: a queue cluster whose submission fails hangs forever -------------------------------------------

def _queue_job(tmp_path: Path) -> Path:
    scene = write_scene(tmp_path / "a.tif", _pixels())
    return _job(tmp_path / "job.yaml", _catalog(tmp_path / "cat", {"a": str(scene)}), tmp_path / "out",
                cluster={"kind": "slurm", "cores": 1, "memory": "1GB", "interface": "lo", "worker_timeout_s": 60})


def _pipeline(job: Path, env: dict, timeout_s: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(GEOSEG + ["pipeline", "run", str(job), "--quiet"], capture_output=True, text=True,
                          timeout=timeout_s, env=env)


def test_a_queue_cluster_without_its_submit_command_is_one_line(tmp_path):
    env = dict(os.environ, PATH=str(Path(sys.executable).parent))  # python, no sbatch
    done = _pipeline(_queue_job(tmp_path), env)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "'sbatch' is not on this machine's PATH" in done.stderr.splitlines()[-1]
    assert not (tmp_path / "out" / ".geoseg-job.lock").exists()


def test_a_refused_submission_is_one_line_not_a_hang(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    sbatch = bin_dir / "sbatch"  # a queue that refuses every job, as SLURM does for an unknown partition
    sbatch.write_text("#!/bin/sh\necho 'sbatch: error: invalid partition specified: nope' >&2\nexit 1\n")
    sbatch.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    done = _pipeline(_queue_job(tmp_path), env)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "invalid partition" in done.stderr.splitlines()[-1]


# --- L1: job files skip the CLI's checks -----------------------------------------------------------------------

@pytest.mark.parametrize("fields, where", [
    ({"output": {"folder": "o", "min_area_m2": float("inf")}}, "output.min_area_m2"),
    ({"output": {"folder": "o", "simplify_m": float("inf")}}, "output.simplify_m"),
    ({"output": {"folder": "o"}, "device": "potato"}, "device"),
    ({"output": {"folder": "o"}, "tiling": {"tile_px": 64, "overlap_px": 64}}, "tiling.overlap_px"),
], ids=["min_area inf", "simplify inf", "device potato", "overlap = tile"])
def test_a_job_no_scene_could_run_with_is_refused_whole(tmp_path, fields, where):
    from geoseg.job import load_job

    job = {"name": "l1", "catalog": "cat.json", "backend": "fastscnn", "cluster": {"kind": "local", "workers": 0}, **fields}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    with pytest.raises(GeosegError, match=f"job.yaml: {where}"):
        load_job(tmp_path / "job.yaml")


# --- L2: SLURM fields unvalidated -------------------------------------------------------------------------------

@pytest.mark.parametrize("field, value", [
    ("queue", "normal\ntouch /tmp/INJECTED"), ("account", "a\rb"), ("walltime", "01:00:00\nid"),
    ("job_extra_directives", ["--exclusive\nrm -rf ~"]), ("memory", "lots"), ("walltime", "soon"),
])
def test_queue_fields_cannot_carry_shell_lines_or_nonsense(tmp_path, field, value):
    from geoseg.job import load_job

    job = {"name": "l2", "catalog": "cat.json", "output": {"folder": "o"}, "cluster": {"kind": "slurm", field: value}}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    with pytest.raises(GeosegError, match=f"cluster.slurm.{field}"):
        load_job(tmp_path / "job.yaml")


def test_a_memory_field_the_queue_understands_is_accepted(tmp_path):
    from geoseg.cluster import queue_cluster
    from geoseg.job import load_job

    job = {"name": "l2", "catalog": "cat.json", "output": {"folder": "o"},
           "cluster": {"kind": "slurm", "memory": "4GB", "walltime": "1-02:00:00", "queue": "normal"}}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    script = queue_cluster(load_job(tmp_path / "job.yaml").cluster).job_script()
    assert "#SBATCH -p normal" in script and "#SBATCH -t 1-02:00:00" in script


# --- L4: geoseg evaluate and bad references ----------------------------------------------------------------------

@pytest.fixture
def run_folder(tmp_path):
    scene = write_scene(tmp_path / "scene.tif", _pixels(128))
    run_scene(scene, tmp_path / "run", RunOptions(workers=0, progress=False, formats=["parquet"], min_area_m2=0,
                                                  simplify_m=0), backend=PixelBackend())
    return tmp_path / "run" / "scene"


def test_evaluate_refuses_an_empty_file_and_points_with_one_line(tmp_path, run_folder, capsys):
    (tmp_path / "zero.geojson").write_text("")
    frame = gpd.read_parquet(run_folder / "buildings.parquet")
    gpd.GeoDataFrame(geometry=frame.geometry.centroid, crs=frame.crs).to_file(tmp_path / "points.gpkg")
    gpd.GeoDataFrame(geometry=frame.geometry.boundary, crs=frame.crs).to_file(tmp_path / "lines.gpkg")
    for name, message in (("zero.geojson", "not a readable vector file"), ("points.gpkg", "found 1 Point"),
                          ("lines.gpkg", "must be polygons")):
        assert main(["evaluate", str(run_folder), "--reference", str(tmp_path / name)]) == 2
        _one_error_line(capsys.readouterr().err, message)


def test_evaluate_repairs_self_intersecting_references(tmp_path, run_folder, capsys):
    frame = gpd.read_parquet(run_folder / "buildings.parquet")
    x0, y0, x1, y1 = frame.geometry.iloc[0].bounds
    bowtie = shapely.Polygon([(x0, y0), (x1, y1), (x1, y0), (x0, y1)])
    gpd.GeoDataFrame(geometry=[bowtie], crs=frame.crs).to_file(tmp_path / "bowtie.gpkg")
    assert main(["evaluate", str(run_folder), "--reference", str(tmp_path / "bowtie.gpkg")]) == 0
    assert "building_iou" in capsys.readouterr().out


def test_evaluate_warns_when_the_reference_misses_the_scene(tmp_path, run_folder, capsys):
    frame = gpd.read_parquet(run_folder / "buildings.parquet")
    far = frame.assign(geometry=frame.geometry.translate(50_000, 0))
    far.to_file(tmp_path / "far.gpkg")
    assert main(["evaluate", str(run_folder), "--reference", str(tmp_path / "far.gpkg")]) == 0
    assert "geoseg: warning: none of the reference's 1 polygons" in capsys.readouterr().err


# --- L5, L6: catalogs with a broken child link; ItemCollections ---------------------------------------------------

def test_a_broken_child_link_is_one_line(tmp_path, capsys):
    (tmp_path / "catalog.json").write_text(json.dumps({"type": "Catalog", "stac_version": "1.0.0", "id": "c",
                                                       "description": "x", "links": [{"rel": "child", "href": "./nope/catalog.json"}]}))
    job = _job(tmp_path / "job.yaml", tmp_path / "catalog.json", tmp_path / "out")
    assert main(["pipeline", "run", str(job), "--quiet"]) == 2
    _one_error_line(capsys.readouterr().err, "a child or item link cannot be read")


def test_an_item_collection_is_read_with_hrefs_relative_to_it(tmp_path):
    from geoseg.catalog import catalog_scenes

    scene = write_scene(tmp_path / "s.tif", _pixels())
    (tmp_path / "sub").mkdir()
    item = {"type": "Feature", "stac_version": "1.0.0", "id": "s", "geometry": None, "links": [],
            "properties": {"datetime": "2024-01-01T00:00:00Z"}, "assets": {"image": {"href": "../s.tif", "roles": ["data"]}}}
    (tmp_path / "sub" / "items.json").write_text(json.dumps({"type": "FeatureCollection", "features": [item]}))
    [ref] = catalog_scenes(tmp_path / "sub" / "items.json")
    assert ref.id == "s" and Path(ref.href).resolve() == scene.resolve()


# --- L7, L10: --chunk ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("chunk_px", [1024, 3000, 2 ** 72])
def test_chunks_that_would_change_outlines_or_overflow_are_refused(chunk_px):
    with pytest.raises(GeosegError, match="--chunk"):
        RunOptions(chunk_px=chunk_px).check()


def test_every_allowed_chunk_traces_in_the_same_windows():
    from geoseg.chunk import VECTOR_WINDOW_PX, window_px_for

    assert {window_px_for(c) for c in (2048, 4096, 8192)} == {VECTOR_WINDOW_PX}


# --- L8: catalog build -o . -------------------------------------------------------------------------------------

def test_catalog_build_into_the_current_folder_is_one_line(tmp_path, capsys, monkeypatch):
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    write_scene(scenes / "a.tif", _pixels())
    here = tmp_path / "empty"
    here.mkdir()
    monkeypatch.chdir(here)
    for target in (".", "./", "sub/.."):
        assert main(["catalog", "build", str(scenes), "-o", target]) == 2
        _one_error_line(capsys.readouterr().err, "holds the current folder")
    assert here.is_dir() and not any(tmp_path.glob(".empty*"))


# --- L9: weights of the wrong dtype or NaN ------------------------------------------------------------------------

@pytest.mark.parametrize("damage, message", [("int32", "not floating point"), ("nan", "NaN or infinite")])
def test_weights_that_cannot_run_are_refused(tmp_path, damage, message):
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from geoseg.card import resolve_model_path
    from geoseg.model import load_model

    source = resolve_model_path("buildings-fastscnn")
    weights = load_file(str(source))
    if damage == "int32":
        weights = {k: v.to(torch.int32) if v.is_floating_point() else v for k, v in weights.items()}
    else:
        name = next(k for k, v in weights.items() if v.is_floating_point())
        weights[name] = weights[name].clone()
        weights[name].view(-1)[0] = float("nan")
    save_file(weights, str(tmp_path / "bad.safetensors"))
    shutil.copy(source.with_suffix(".json"), tmp_path / "bad.json")
    with pytest.raises(GeosegError, match=message):
        load_model(tmp_path / "bad.safetensors")


# --- L10: a garbage job lock ------------------------------------------------------------------------------------

def test_a_garbage_job_lock_is_stale_and_taken_over(tmp_path):
    from geoseg.batch import LOCK, run_job
    from geoseg.job import load_job

    scene = write_scene(tmp_path / "s.tif", _pixels())
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK).write_text("not-a-pid")
    summary = run_job(load_job(_job(tmp_path / "job.yaml", _catalog(tmp_path / "cat", {"s": str(scene)}), out)),
                      progress=False)
    assert summary["done"] == 1 and not (out / LOCK).exists()


# --- observations: concurrent runs, shared file systems, pickles in staging ------------------------------------

def test_a_second_run_into_a_scene_folder_in_use_is_refused(tmp_path):
    from geoseg.pipeline import STAGING_PREFIX

    scene = write_scene(tmp_path / "t.tif", _pixels())
    live = tmp_path / "out" / "t" / f"{STAGING_PREFIX}otherhost-{os.getpid()}"  # another host's run: alive for us
    live.mkdir(parents=True)
    with pytest.raises(GeosegError, match="another geoseg run is writing this folder"):
        run_scene(scene, tmp_path / "out", RunOptions(workers=0, progress=False), backend=PixelBackend())
    assert live.is_dir()  # never deleted: its host may still be writing it


def test_staging_of_a_dead_run_on_this_host_is_removed_and_the_run_goes_on(tmp_path):
    from geoseg.lock import this_host
    from geoseg.pipeline import STAGING_PREFIX

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    scene = write_scene(tmp_path / "t.tif", _pixels())
    leftover = tmp_path / "out" / "t" / f"{STAGING_PREFIX}{this_host()}-{dead.stdout.strip()}"
    leftover.mkdir(parents=True)
    run_scene(scene, tmp_path / "out", RunOptions(workers=0, progress=False, formats=["geojson"]), backend=PixelBackend())
    assert not leftover.exists() and (tmp_path / "out" / "t" / "mask.tif").exists()


def test_border_pieces_cross_the_staging_folder_as_plain_arrays(tmp_path):
    from geoseg.staging import dump_instances, dump_pieces, load_instances, load_pieces
    from geoseg.instances import Instance
    from geoseg.vectorise import Piece

    pieces = [Piece(box(0, 0, 3, 2), 510.0, 6, 3), Piece(shapely.MultiPolygon([box(5, 5, 6, 6), box(8, 8, 9, 9)]), 2.0, 2)]
    dump_pieces(tmp_path / "p.npz", pieces)
    back = load_pieces(tmp_path / "p.npz")
    assert [(p.polygon.wkb, p.probability_sum, p.pixels, p.window) for p in back] == \
           [(p.polygon.wkb, p.probability_sum, p.pixels, p.window) for p in pieces]
    instances = [Instance(4, 7, np.eye(3, 4, dtype=bool), 0.75), Instance(0, 1, np.ones((2, 1), bool), 0.5)]
    dump_instances(tmp_path / "i.npz", instances)
    again = load_instances(tmp_path / "i.npz")
    assert all(a.row_px == b.row_px and a.col_px == b.col_px and a.score == b.score and (a.mask == b.mask).all()
               for a, b in zip(again, instances))
    with np.load(tmp_path / "p.npz", allow_pickle=False) as arrays:  # nothing in it needs unpickling
        assert all(arrays[k].dtype != object for k in arrays.files)
