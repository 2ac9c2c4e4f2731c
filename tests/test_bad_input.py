"""Bad input: a clear one-line error, exit code 2, and nothing left in the output folder."""

import subprocess
import sys

import numpy as np
import pytest
import rasterio
from affine import Affine

from geoseg.cli import main
from geoseg.pipeline import run_scene

from conftest import PixelBackend, write_scene


def scene_files(tmp_path):
    good = write_scene(tmp_path / "good.tif", np.random.default_rng(0).integers(0, 255, (3, 64, 64)).astype("uint8"))
    (tmp_path / "notes.tif").write_text("this is not a raster\n")
    (tmp_path / "empty.tif").write_bytes(b"")
    with rasterio.open(tmp_path / "nocrs.tif", "w", driver="GTiff", width=16, height=16, count=3, dtype="uint8",
                       transform=Affine(0.3, 0, 1000, 0, -0.3, 2000)) as dst:
        dst.write(np.zeros((3, 16, 16), "uint8"))
    (tmp_path / "blocker").write_text("a file where the output folder should go")
    return good


CASES = [
    (["missing.tif"], "no such file"),
    (["notes.tif"], "not a readable raster"),
    (["empty.tif"], "empty file (0 bytes)"),
    (["nocrs.tif"], "has no CRS; pass --assume-crs"),
    (["good.tif", "--bands", "5"], "has bands 1..3 only"),
    (["good.tif", "--bands", "1,2"], "1 or 3 band numbers"),
    (["good.tif", "--formats", "kml"], "--formats: unknown kml"),
    (["good.tif", "--tile", "64", "--overlap", "64"], "--overlap 64: must be smaller than the tile"),
    (["good.tif", "-o", "blocker/out"], "cannot write to output folder"),
    (["nocrs.tif", "--assume-crs", "EPSG:99999999"], "not a CRS that PROJ knows"),
]


@pytest.mark.parametrize("argv,message", CASES, ids=[c[1].split()[0] + "-" + c[0][0] for c in CASES])
def test_bad_input_gives_one_line_and_leaves_nothing(tmp_path, monkeypatch, capsys, argv, message):
    scene_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    args = ["run", *argv, "--workers", "0", "--quiet"]
    if "-o" not in argv:
        args += ["-o", "out"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("geoseg: error: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.*"))


def test_assume_crs_makes_a_crs_less_raster_run(tmp_path, monkeypatch, capsys):
    scene_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    from geoseg.pipeline import RunOptions

    summary = run_scene("nocrs.tif", "out", RunOptions(workers=0, assume_crs="EPSG:32636", progress=False),
                        backend=PixelBackend())
    assert summary.crs == "EPSG:32636"
    with rasterio.open(tmp_path / "out" / "nocrs" / "mask.tif") as mask:
        assert mask.crs.to_epsg() == 32636


class FailingBackend(PixelBackend):
    def predict(self, pixels):
        if self.tiles_seen >= 2:
            raise RuntimeError("worker died")
        return super().predict(pixels)


def test_failed_run_leaves_no_file_that_looks_complete(tmp_path, fast_options):
    scene = write_scene(tmp_path / "scene.tif", np.random.default_rng(0).integers(0, 255, (3, 400, 400)).astype("uint8"))
    fast_options.batch_tiles = 1
    with pytest.raises(RuntimeError, match="worker died"):
        run_scene(scene, tmp_path / "out", fast_options, backend=FailingBackend())
    assert not (tmp_path / "out" / "scene").exists()  # no partial files, no staging folder, no empty folder


def test_cli_exit_code_in_a_real_process(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "geoseg.cli", "run", str(tmp_path / "nope.tif"), "-o", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"geoseg: error: {tmp_path / 'nope.tif'}: no such file"]


def test_one_bad_scene_among_several_is_reported_and_the_others_run(tmp_path, monkeypatch, capsys):
    scene_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["run", "good.tif", "notes.tif", "-o", "out", "--workers", "0", "--quiet"]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("geoseg: error: notes.tif: not a readable raster") == 1
    assert (tmp_path / "out" / "good" / "summary.json").exists() and not (tmp_path / "out" / "notes").exists()
