"""Catalogs and pipeline jobs with real processes on loopback: a Dask scheduler and workers started as
commands, a driver SIGKILLed mid-run, a corrupt scene, STAC round trips. Fast-SCNN keeps them quick."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pystac
import pytest
import rasterio
import yaml

from geoseg.batch import run_job
from geoseg.catalog import build_catalog, catalog_scenes, validate_offline
from geoseg.demo import generate_scene
from geoseg.errors import GeosegError
from geoseg.cluster import QueueSpec, queue_cluster
from geoseg.job import load_job

GEOSEG = [sys.executable, "-m", "geoseg.cli"]


def make_catalog(tmp_path, n=3, size_px=512):
    scenes = tmp_path / "scenes"
    scenes.mkdir(exist_ok=True)
    for i in range(n):
        generate_scene(scenes / f"scene_{i}.tif", size_px=size_px, seed=10 + i)
    return build_catalog(scenes, tmp_path / "catalogs" / "demo")


def write_job(tmp_path, catalog, **overrides):
    job = {"name": "test-job", "catalog": str(catalog), "backend": "fastscnn",
           "tiling": {"tile_px": 256, "overlap_px": 32, "batch_tiles": 2},
           "output": {"folder": str(tmp_path / "out"), "formats": ["geojson", "parquet"]},
           "cluster": {"kind": "local", "workers": 0}, "retries": 1, "schedule": "0 2 * * *"}
    job.update(overrides)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def manifest(out):
    path = Path(out) / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else {}


def test_catalog_build_run_and_result_catalog_round_trip_through_pystac_validation(tmp_path):
    catalog = make_catalog(tmp_path, n=2)
    for obj in [pystac.read_file(str(catalog))] + list(pystac.read_file(str(catalog)).get_items(recursive=True)):
        validate_offline(obj)
    scenes = catalog_scenes(catalog)
    assert [s.id for s in scenes] == ["scene_0", "scene_1"] and all(Path(s.href).exists() for s in scenes)
    item = pystac.Item.from_file(scenes[0].item_href)
    with rasterio.open(scenes[0].href) as ds:
        assert item.properties["proj:code"] == f"EPSG:{ds.crs.to_epsg()}"
        assert item.properties["proj:shape"] == [ds.height, ds.width]
        assert item.properties["proj:transform"] == list(ds.transform)[:6]
    summary = run_job(load_job(write_job(tmp_path, catalog)), progress=False)
    assert (summary["done"], summary["failed"]) == (2, 0)
    results = pystac.read_file(str(tmp_path / "out" / "stac" / "catalog.json"))
    items = list(results.get_items(recursive=True))
    assert sorted(i.id for i in items) == ["scene_0", "scene_1"]
    for result in items:
        assert validate_offline(result) == ["https://stac-extensions.github.io/projection/v2.0.0/schema.json"]
        assert result.properties["geoseg:model"] == "buildings-fastscnn"
        assert result.properties["geoseg:decoder_execution_rate"] == 1.0
        assert {"mask", "probability", "buildings-geojson", "buildings-parquet"} <= set(result.assets)
        with rasterio.open(result.assets["mask"].get_absolute_href()) as mask:
            assert mask.crs.to_epsg() == 32636
        source = result.get_single_link("derived_from").href
        assert source.endswith(f"{result.id}.json") and result.datetime == pystac.Item.from_file(source).datetime
    # moved with its scenes, the result catalog still resolves (relative hrefs)
    (tmp_path / "moved").mkdir()
    os.rename(tmp_path / "out", tmp_path / "moved" / "out")
    moved = next(pystac.read_file(str(tmp_path / "moved" / "out" / "stac" / "catalog.json")).get_items(recursive=True))
    assert Path(moved.assets["mask"].get_absolute_href()).exists()


def test_rerun_skips_unchanged_scenes_and_redoes_a_changed_one(tmp_path, monkeypatch):
    import geoseg.batch

    catalog = make_catalog(tmp_path, n=2)
    job = load_job(write_job(tmp_path, catalog))
    run_job(job, progress=False)
    first = manifest(tmp_path / "out")
    mtime = (tmp_path / "out" / "scene_0" / "mask.tif").stat().st_mtime_ns
    with monkeypatch.context() as patch:  # unchanged size and mtime: the recorded checksums are trusted, no read
        patch.setattr(geoseg.batch, "file_sha256", lambda path: pytest.fail(f"{path} was hashed again"))
        assert [r["status"] for r in run_job(job, progress=False)["per_scene"]] == ["skipped", "skipped"]
    os.utime(tmp_path / "scenes" / "scene_0.tif")  # touched, same bytes: hashed again, still the same scene
    generate_scene(tmp_path / "scenes" / "scene_1.tif", size_px=512, seed=99)  # the scene changed on disk
    summary = run_job(job, progress=False)
    assert [r["status"] for r in summary["per_scene"]] == ["skipped", "done"]
    touched = manifest(tmp_path / "out")["scene_0"]
    assert touched["input_mtime_ns"] != first["scene_0"]["input_mtime_ns"]  # recorded, so not hashed next time
    assert {k: v for k, v in touched.items() if k != "input_mtime_ns"} == \
        {k: v for k, v in first["scene_0"].items() if k != "input_mtime_ns"}
    assert (tmp_path / "out" / "scene_0" / "mask.tif").stat().st_mtime_ns == mtime
    assert manifest(tmp_path / "out")["scene_1"]["input_sha256"] != first["scene_1"]["input_sha256"]


def test_a_corrupt_scene_is_reported_and_the_others_complete(tmp_path):
    catalog = make_catalog(tmp_path, n=3)
    (tmp_path / "scenes" / "scene_1.tif").write_bytes(b"II*\x00" + os.urandom(5000))  # damaged after cataloguing
    proc = subprocess.run(GEOSEG + ["pipeline", "run", str(write_job(tmp_path, catalog)), "--quiet"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3, proc.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    status = {r["scene"]: r for r in summary["per_scene"]}
    assert status["scene_0"]["status"] == status["scene_2"]["status"] == "done"
    assert status["scene_1"]["status"] == "failed" and "scene_1.tif" in status["scene_1"]["error"]
    assert "failed: scene_1" in proc.stderr and "| scene_1 | failed |" in (tmp_path / "out" / "summary.md").read_text()
    assert not (tmp_path / "out" / "scene_1").exists()


def test_driver_killed_mid_run_then_a_rerun_completes_without_recomputing_or_duplicating(tmp_path):
    catalog = make_catalog(tmp_path, n=5, size_px=640)
    job = write_job(tmp_path, catalog)
    out = tmp_path / "out"
    proc = subprocess.Popen(GEOSEG + ["pipeline", "run", str(job), "--quiet"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not any(v.get("status") == "done" for v in manifest(out).values()):
        assert proc.poll() is None and time.time() < deadline, "the run ended before it could be killed"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = {k: v for k, v in manifest(out).items() if v["status"] == "done"}
    assert 1 <= len(done_before) < 5
    assert (out / ".geoseg-job.lock").exists()  # the dead run's lock is taken over, not obeyed
    stamps = {k: (out / k / "mask.tif").stat().st_mtime_ns for k in done_before}
    summary = run_job(load_job(job), progress=False)
    assert summary["failed"] == 0 and summary["done"] + summary["skipped"] == 5
    assert {r["scene"] for r in summary["per_scene"] if r["status"] == "skipped"} == set(done_before)
    assert {k: (out / k / "mask.tif").stat().st_mtime_ns for k in done_before} == stamps
    assert not list(out.glob("*/.geoseg-partial-*")) and not list(out.glob(".*tmp*")) and not (out / ".geoseg-job.lock").exists()
    for scene, entry in manifest(out).items():
        ids = [f["properties"]["id"] for f in json.loads((out / scene / "buildings.geojson").read_text())["features"]]
        assert len(ids) == len(set(ids)) == entry["buildings"]  # every building once


def _dask(*args, log):
    return subprocess.Popen(["dask", *args], stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})


def test_real_scheduler_and_workers_one_killed_mid_run_every_scene_exactly_once(tmp_path):
    catalog = make_catalog(tmp_path, n=4, size_px=768)
    scheduler_file, log = tmp_path / "scheduler.json", open(tmp_path / "dask.log", "w")
    processes = [_dask("scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                       "--scheduler-file", str(scheduler_file), log=log)]
    try:
        deadline = time.time() + 60
        while not scheduler_file.exists():
            assert time.time() < deadline, "dask scheduler did not start"
            time.sleep(0.1)
        address = json.loads(scheduler_file.read_text())["address"]
        for name in ("worker-a", "worker-b"):
            processes.append(_dask("worker", address, "--name", name, "--nthreads", "1", "--no-dashboard",
                                   "--host", "127.0.0.1", log=log))
        from distributed import Client

        with Client(address, timeout="30s") as client:
            client.wait_for_workers(2, timeout=90)
        job = load_job(write_job(tmp_path, catalog), address=address)
        killed = threading.Event()

        def kill_worker_b():
            while not any(v.get("status") == "done" for v in manifest(tmp_path / "out").values()):
                time.sleep(0.02)
            os.killpg(processes[2].pid, signal.SIGKILL)
            killed.set()

        threading.Thread(target=kill_worker_b, daemon=True).start()
        summary = run_job(job, progress=False)
        assert killed.is_set() and processes[2].wait(timeout=10) is not None
        assert summary["done"] == 4 and summary["failed"] == 0
        entries = manifest(tmp_path / "out")
        assert sorted(entries) == [f"scene_{i}" for i in range(4)] and all(e["attempts"] == 1 for e in entries.values())
        # outputs are the same as an in-process run: nothing lost or counted twice when the worker died
        reference = run_job(load_job(write_job(tmp_path, catalog, output={"folder": str(tmp_path / "ref"),
                                                                          "formats": ["geojson"]})), progress=False)
        for row in reference["per_scene"]:
            with rasterio.open(tmp_path / "out" / row["scene"] / "mask.tif") as a, \
                    rasterio.open(tmp_path / "ref" / row["scene"] / "mask.tif") as b:
                assert (a.read(1) != b.read(1)).mean() < 0.001
            assert abs(entries[row["scene"]]["buildings"] - row["buildings"]) <= 1
    finally:
        for p in processes:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        log.close()


def test_job_errors_name_the_field_and_overrides_apply(tmp_path):
    catalog = tmp_path / "catalog.json"
    cases = {"tiling.tile_px": {"tiling": {"tile_px": 10}}, "output.formats": {"output": {"folder": "o", "formats": ["kml"]}},
             "cluster.address.address": {"cluster": {"kind": "address", "address": "localhost:8786"}},
             "schedule": {"schedule": "every day"}, "colour": {"colour": "red"}}
    for field, change in cases.items():
        with pytest.raises(GeosegError, match=rf"job\.yaml: {field}"):
            load_job(write_job(tmp_path, catalog, **change))
    job = load_job(write_job(tmp_path, catalog), catalog=str(tmp_path / "other.json"), out=str(tmp_path / "o2"), workers=3)
    assert job.catalog == str(tmp_path / "other.json") and job.output.folder == str(tmp_path / "o2")
    assert job.cluster.kind == "local" and job.cluster.workers == 3
    with pytest.raises(GeosegError, match="no such file"):
        run_job(job, progress=False)


def test_a_second_run_of_a_job_is_refused_while_the_first_holds_the_lock(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".geoseg-job.lock").write_text(str(os.getpid()))  # this process is alive
    with pytest.raises(GeosegError, match="another run of this job is in progress"):
        run_job(load_job(write_job(tmp_path, tmp_path / "catalog.json")), progress=False)


def test_slurm_cluster_job_script_carries_the_job_settings():
    script = queue_cluster(QueueSpec(kind="slurm", jobs=2, cores=6, memory="24GB", walltime="01:30:00",
                                     queue="gpu")).job_script()
    assert "#SBATCH -p gpu" in script and "01:30:00" in script and "--nworkers 6" in script and "--nthreads 1" in script


def test_shipped_examples_are_valid_and_agree_on_the_schedule():
    root = Path(__file__).resolve().parents[1]
    jobs = [load_job(p) for p in sorted((root / "pipelines").glob("*.yaml"))]
    assert {j.name for j in jobs} >= {"demo-buildings", "demo-buildings-slurm"}
    demo = next(j for j in jobs if j.name == "demo-buildings")
    assert [s.id for s in catalog_scenes(demo.catalog, demo.asset)] == ["demo_0", "demo_1", "demo_2"]
    assert all(Path(s.href).exists() for s in catalog_scenes(demo.catalog))
    cron = (root / "pipelines" / "cron.example").read_text().splitlines()[-1]
    cronjob = yaml.safe_load((root / "pipelines" / "kubernetes" / "cronjob.yaml").read_text())
    assert " ".join(cron.split()[:5]) == cronjob["spec"]["schedule"] == demo.schedule
    assert subprocess.run(["bash", "-n", str(root / "pipelines" / "slurm" / "demo-buildings.sbatch")]).returncode == 0
    assert "OnCalendar=*-*-* 02:00:00" in (root / "pipelines" / "systemd" / "geoseg-demo-buildings.timer").read_text()


def test_the_settings_key_holds_the_building_threshold_and_floor_of_the_card_unless_the_job_sets_them(tmp_path):
    """A card that gains a building threshold changes every scene's mask, so its scenes are not skipped as done;
    a card without one keeps the key of earlier versions (old manifests stay valid)."""
    from dataclasses import replace

    from geoseg.backends import describe_backend, spec_for
    from geoseg.batch import _settings_key

    job = load_job(write_job(tmp_path, tmp_path / "catalog.json"))
    spec = spec_for(job)
    card, _ = describe_backend(spec)
    plain = replace(card, building_threshold=None)
    assert _settings_key(job, spec, plain) == _settings_key(job, spec)
    assert _settings_key(job, spec, replace(card, building_threshold=0.4)) != _settings_key(job, spec, plain)
    assert _settings_key(job, spec, replace(card, building_threshold=0.3)) != \
        _settings_key(job, spec, replace(card, building_threshold=0.4))
    path = write_job(tmp_path, tmp_path / "catalog.json", output={"folder": "o", "building_threshold": 0.4})
    set_in_job = load_job(path)
    assert _settings_key(set_in_job, spec, replace(card, building_threshold=0.3)) == _settings_key(set_in_job, spec, plain)
    # the same for the card's confidence floor, which changes the polygons
    unfloored = replace(plain, min_confidence=None)
    assert _settings_key(job, spec, unfloored) == _settings_key(job, spec)
    assert _settings_key(job, spec, replace(unfloored, min_confidence=0.65)) != _settings_key(job, spec, unfloored)
    floored_job = load_job(write_job(tmp_path, tmp_path / "catalog.json", output={"folder": "o", "min_confidence": 0.5}))
    assert _settings_key(floored_job, spec, replace(unfloored, min_confidence=0.65)) == \
        _settings_key(floored_job, spec, unfloored)
