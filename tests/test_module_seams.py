"""The seams between modules (issue 26): no two modules import each other, the records that cross the worker
boundary add up and pickle, and an output format is one module of geoseg.formats that every list of formats
reads (FlatGeobuf, added that way, written by a real run and read back)."""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import geopandas as gpd
import pytest

import geoseg
from geoseg.evaluate import evaluate
from geoseg.formats import DEFAULT_FORMATS, REGISTRY, is_sidecar, media_type
from geoseg.options import RunOptions
from geoseg.pipeline import run_scene
from geoseg.samples import sample_path
from geoseg.staging import BatchStats, ChunkResult, FinishResults, VectorsWritten
from geoseg.write import SCENE_OUTPUTS

PACKAGE = Path(geoseg.__file__).parent


def _module_name(path: Path) -> str:
    parts = list(path.with_suffix("").relative_to(PACKAGE.parent).parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """geoseg modules ``path`` imports anywhere (top level, inside functions), TYPE_CHECKING blocks left out."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    type_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                 for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in type_only or not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
        elif node.module and node.module.startswith("geoseg"):
            target = node.module
        else:
            continue
        for alias in node.names:
            found.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in modules else target)
    return {m for m in found if m in modules and m != name}


def test_no_two_modules_import_each_other():
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: _imports(path, set(paths)) for name, path in paths.items()}
    assert graph["geoseg.tasks"] >= {"geoseg.staging", "geoseg.assemble"}  # the walk sees imports at all
    circles = sorted((a, b) for a in graph for b in graph[a] if a < b and a in graph.get(b, ()))
    assert circles == []


def test_batch_stats_add_up_and_cross_a_process_boundary():
    a = BatchStats(1.0, 2.0, 3, 1, 3, {"blocks": 10})
    b = BatchStats(0.5, 1.0, 2, 2, 0, {"blocks": 5, "instances_detected": 7})
    total = BatchStats.total([a, b])
    assert total == BatchStats(1.5, 3.0, 5, 3, 3, {"blocks": 15, "instances_detected": 7})
    assert BatchStats.total([]) == BatchStats()
    assert a.counters == {"blocks": 10}  # adding left its terms alone
    result = ChunkResult(4, total, 0.1, 0.2, 0.3, polygons=9, border=2, rss_mb={"host:1": 512.0},
                         finished=FinishResults.of({"mask": 0.5, "probability": 0.6,
                                                    "vectors": VectorsWritten(9, 0.7, ("buildings.gpkg",))}))
    assert pickle.loads(pickle.dumps(result)) == result
    with pytest.raises(AttributeError):
        result.polygons = 0  # frozen: a record is read, never patched on the way


def test_every_list_of_formats_reads_the_registry():
    assert set(DEFAULT_FORMATS) <= set(REGISTRY) and "fgb" in REGISTRY and "fgb" not in DEFAULT_FORMATS
    assert RunOptions().formats == list(DEFAULT_FORMATS)
    for fmt in REGISTRY.values():
        assert set(fmt.file_names()) <= SCENE_OUTPUTS  # a rerun can remove what any format wrote
        assert media_type(fmt.file_name) == fmt.media_type and not is_sidecar(fmt.file_name)
    assert is_sidecar("buildings.dbf") and not is_sidecar("mask.tif")
    with pytest.raises(geoseg.errors.GeosegError, match="--formats: unknown kml; choose from .*fgb"):
        RunOptions(formats=["kml"]).check()


def test_flatgeobuf_holds_the_same_buildings_as_the_geopackage(tmp_path):
    summary = run_scene(sample_path(), tmp_path, RunOptions(workers=0, progress=False, formats=["gpkg", "fgb"]))
    folder = tmp_path / "nacala"
    assert summary.outputs[2:4] == ["buildings.gpkg", "buildings.fgb"] and summary.buildings > 10
    gpkg = gpd.read_file(folder / "buildings.gpkg")
    fgb = gpd.read_file(folder / "buildings.fgb").sort_values("id").reset_index(drop=True)  # stored in R-tree order
    assert fgb.crs == gpkg.crs and list(fgb["id"]) == list(gpkg["id"]) == list(range(1, summary.buildings + 1))
    assert all(a.equals_exact(b, 1e-9) for a, b in zip(fgb.geometry, gpkg.geometry))
    (folder / "buildings.gpkg").unlink()  # evaluate finds the FlatGeobuf when it is the only vector file
    scores = evaluate(folder, folder / "buildings.fgb")
    assert scores["spacenet_f1"] == 1.0 and scores["matched"] == summary.buildings


def test_one_options_model_makes_the_flags_and_the_job_fields(tmp_path):
    import yaml

    from geoseg.cli import build_parser
    from geoseg.errors import GeosegError
    from geoseg.job import load_job
    from geoseg.options import run_fields

    run = next(a for a in build_parser()._subparsers._group_actions[0].choices["run"]._actions if a.dest == "tile_px")
    assert run.option_strings == ["--tile"] and run.default == RunOptions().tile_px
    flags = {a.dest for a in build_parser()._subparsers._group_actions[0].choices["run"]._actions}
    assert {f.name for f in run_fields()} <= flags  # every option is a flag
    # every option but the cluster's is a job field, in the section its field names, and reaches the run
    changed = {"tiling": {"chunk_px": 4096}, "reading": {"bands": [3, 2, 1], "assume_crs": "EPSG:32636",
                                                          "target_gsd_m": 0.5, "native_resolution": False},
               "output": {"folder": "o", "building_threshold": 0.35, "min_confidence": 0.6, "separator_threshold": 0.2, "separator_dilate_px": 1, "formats": ["fgb"]},
               "tta": True, "backend": "unet"}
    job = {"name": "j", "catalog": "cat.json", "cluster": {"kind": "local", "workers": 0}, **changed}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    options = load_job(tmp_path / "job.yaml").run_options()
    assert (options.chunk_px, options.bands, options.assume_crs, options.target_gsd_m) == (4096, [3, 2, 1], "EPSG:32636", 0.5)
    assert (options.separator_threshold, options.separator_dilate_px, options.formats, options.tta) == (0.2, 1, ["fgb"], True)
    assert (options.building_threshold, options.min_confidence) == (0.35, 0.6)
    in_jobs = {f.name for f in run_fields() if f.metadata["job"] is not None}
    assert in_jobs == {f.name for f in run_fields()} - {"workers", "scheduler", "progress"}
    # and is checked as the command line is, the error naming the job field
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job | {"reading": {"target_gsd_m": -1}}))
    with pytest.raises(GeosegError, match=r"job.yaml: reading.target_gsd_m -1"):
        load_job(tmp_path / "job.yaml")
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job | {"tiling": {"chunk_px": 1000}}))
    with pytest.raises(GeosegError, match=r"job.yaml: tiling.chunk_px 1000"):
        load_job(tmp_path / "job.yaml")
