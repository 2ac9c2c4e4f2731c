"""``geoseg pipeline run``: every scene of a catalog through the scene pipeline on one Dask cluster, exactly
once, with nothing lost when a worker or the whole run dies.

Output folder of a job::

    OUT/<scene id>/...        the outputs of ``geoseg run`` (written to a staging folder, renamed when complete)
    OUT/manifest.json         per scene: input sha256, model sha256, settings key, status, outputs, timings
    OUT/summary.json, .md     this run: per scene status (done / skipped / failed), seconds, buildings, errors
    OUT/stac/catalog.json     result catalog: one item per finished scene, assets and provenance; items are
                              stac/<folder>/<folder>.json under the scene's safe folder name, the input item's
                              own id in the property ``geoseg:source_id``

Rules. A scene is *done* only once the manifest says so, and the manifest is rewritten (atomically) after each
scene, so a run killed at any point loses at most the scene in progress. A rerun skips a scene whose manifest
entry is done with the same input checksum, model checksum and output settings, and whose outputs are all
there; it redoes a changed one. A scene file whose size and modification time are unchanged keeps its
recorded checksum instead of being read again. Staging folders left by a killed run are removed. A scene whose input is bad
(corrupt file, no CRS...) is recorded as failed with its one-line error and the others go on; any other
failure (a worker lost more often than Dask's own rescheduling absorbs) is retried ``retries`` times. Only one
run of a job may use an output folder at a time (``OUT/.geoseg-job.lock``), so an overlapping scheduled run is
refused instead of racing the first.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import pystac
from tqdm import tqdm

from . import __version__
from .atomic import write_text_atomic
from .backends import BackendSpec, describe_backend, spec_for
from .card import ModelCard, file_sha256, resolve_model_path
from .catalog import SceneRef, catalog_scenes, scene_item
from .errors import GeosegError
from .formats import is_sidecar, media_type
from .gate import gate_path, pregate_path
from .job import Job
from .options import DEFAULTS, run_fields
from .lock import FileLock
from .scene import check_file
from .pipeline import STAGING_PREFIX, SceneOutcome, one_line_error, run_scenes
from .write import safe_folder_name

MANIFEST, LOCK = "manifest.json", ".geoseg-job.lock"
#: names in a job's output folder that belong to the job itself: no scene folder may take one
JOB_FILES = frozenset({MANIFEST, LOCK, "summary.json", "summary.md", "stac"})
#: media types of a scene's files that are not vector files (those: geoseg.formats)
MEDIA_TYPES = {".tif": pystac.MediaType.COG, ".png": pystac.MediaType.PNG, ".json": pystac.MediaType.JSON}


def run_job(job: Job, progress: bool = True) -> dict:
    """Run a job (module docstring); returns the run summary, also written as summary.json / summary.md."""
    out = Path(job.output.folder)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with FileLock(out / LOCK, "this job"):
        _remove_partials(out)
        scenes = catalog_scenes(job.catalog, job.asset, job.asset_role)
        folders = scene_folders(scenes)
        spec = spec_for(job)
        card, model_sha256 = describe_backend(spec)
        provenance = {"geoseg:version": __version__, "geoseg:model": card.name, "geoseg:model_sha256": model_sha256,
                      "geoseg:backend": spec.name, "geoseg:gate_sha256": _gate_sha256(spec)}
        if spec.cascade:
            provenance["geoseg:pregate_sha256"] = file_sha256(pregate_path(resolve_model_path(spec.model)))
        settings = _settings_key(job, spec, card)
        manifest = _load_manifest(out)
        rows: dict[str, dict] = {}
        bar = tqdm(total=len(scenes), desc=job.name, unit="scene", disable=not progress, file=sys.stderr)

        def record(scene_id: str, row: dict) -> None:
            rows[scene_id] = row
            entry = {k: v for k, v in row.items() if k not in ("status", "reason")}
            entry["status"] = "done" if row["status"] == "skipped" else row["status"]
            if entry != manifest.get(scene_id):  # a skipped scene may have been touched: its new mtime
                manifest[scene_id] = entry
                write_text_atomic(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
            bar.update(1)

        pending: dict[str, tuple[str, dict]] = {}  # output folder -> (scene id, row so far)
        for scene in scenes:
            row = _scene_row(scene, folders[scene.id], out, manifest, model_sha256, settings)
            if row["status"] == "todo":
                pending[folders[scene.id]] = (scene.id, row)
            else:
                record(scene.id, row)
        with job.cluster.client() as client:
            options = job.run_options(spec.name, spec.model, None if client is None else client.scheduler.address)
            todo = [(row["input"], folder) for folder, (_, row) in pending.items()]
            adapted = None
            if job.adapt and todo:  # once per run, to the scenes this run processes
                from .adapt import adapt_run  # torch: only a job that adapts loads it in the driver

                options, adapted = adapt_run([path for path, _ in todo], out, options)
            for outcome in run_scenes(todo, out, options, client, retries=job.retries, adapted=adapted):
                scene_id, row = pending[outcome.name]
                record(scene_id, _finished_row(row, outcome))
        bar.close()
        rows = [rows[scene.id] for scene in scenes]
        _write_result_catalog(out, job, scenes, folders, manifest, provenance)
        summary = {"job": job.name, "catalog": job.catalog, "output": str(out), **provenance,
                   "scenes": len(rows), "done": sum(r["status"] == "done" for r in rows),
                   "skipped": sum(r["status"] == "skipped" for r in rows),
                   "failed": sum(r["status"] == "failed" for r in rows),
                   "seconds": round(time.perf_counter() - started, 2), "finished_at": _now(), "per_scene": rows}
        write_text_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
        write_text_atomic(out / "summary.md", _markdown(summary))
    return summary


def scene_folders(scenes: list[SceneRef]) -> dict[str, str]:
    """Item id -> output folder name: safe, never one of the job's own files, different for every item (the
    catalog's ids are unique; ids that clean to the same text get hashes, see ``safe_folder_name``)."""
    folders = {scene.id: safe_folder_name(scene.id, JOB_FILES) for scene in scenes}
    lowered = [f.lower() for f in folders.values()]
    if len(set(lowered)) != len(lowered):
        clash = sorted(i for i, f in folders.items() if lowered.count(f.lower()) > 1)
        raise GeosegError(f"item ids {', '.join(map(repr, clash[:4]))} would share one output folder; rename one")
    return folders


def _scene_row(scene: SceneRef, folder_name: str, out: Path, manifest: dict, model_sha256: str, settings: str) -> dict:
    """A scene's manifest row before any work: status ``skipped`` (done before with the same input, model and
    settings, outputs all there), ``failed`` (its file cannot be read) or ``todo``."""
    row = {"scene": scene.id, "folder": folder_name, "input": scene.href, "item": scene.item_href,
           "model_sha256": model_sha256, "settings": settings}
    before = manifest.get(scene.id, {})
    try:
        check_file(scene.href)  # before hashing: /dev/zero or a FIFO would be read forever, the job lock held
        row.update(_input_identity(Path(scene.href), before))
    except GeosegError as err:
        return row | {"status": "failed", "error": str(err), "attempts": 0}
    except OSError as err:
        return row | {"status": "failed", "error": f"{scene.href}: cannot read ({err.strerror or err})", "attempts": 0}
    same = {k: before.get(k) for k in ("input_sha256", "model_sha256", "settings")} == \
           {k: row[k] for k in ("input_sha256", "model_sha256", "settings")}
    folder = out / folder_name
    if before.get("status") == "done" and before.get("folder", folder_name) == folder_name and same and all((folder / name).exists() for name in before.get("outputs", [])):
        return {**before, "folder": folder_name, "input_size": row["input_size"], "input_mtime_ns": row["input_mtime_ns"],
                "status": "skipped", "reason": "done before with the same input, model and settings"}
    return row | {"status": "todo"}


def _finished_row(row: dict, outcome: SceneOutcome) -> dict:
    """The manifest row of a scene the run finished (done) or gave up on (failed, with its one-line error)."""
    row = row | {"attempts": outcome.attempts}
    summary = outcome.result
    if isinstance(summary, GeosegError):  # bad input
        return row | {"status": "failed", "error": str(summary)}
    if isinstance(summary, Exception):  # failed on every try: a worker lost, a disk full...
        return row | {"status": "failed", "error": one_line_error(summary)}
    return row | {"status": "done", "error": "", "outputs": summary.outputs + ["summary.json"],
                  "seconds": summary.seconds, "buildings": summary.buildings,
                  "decoder_execution_rate": summary.decoder_execution_rate, "finished_at": _now(),
                  **({"high_res_fraction": summary.details["high_res_fraction"]}
                     if "high_res_fraction" in summary.details else {})}


def _input_identity(path: Path, before: dict) -> dict:
    """Size, modification time and sha256 of a scene file. The checksum recorded in the manifest is reused
    when size and modification time (ns) are those recorded with it, as make and rsync do: a scheduled rerun
    over unchanged scenes then reads none of them (hashing reads the whole file: 76 ms per 100 MB from the page
    cache, far more from network storage)."""
    stat = path.stat()
    identity = {"input_size": stat.st_size, "input_mtime_ns": stat.st_mtime_ns}
    same_file = all(before.get(k) == v for k, v in identity.items()) and before.get("input_sha256")
    return identity | {"input_sha256": before["input_sha256"] if same_file else file_sha256(path)}


#: the settings every key holds, set or not (the key of earlier versions); any other run option enters the key only
#: when it is not at its default, so that a new option never makes the scenes of an older manifest run again
_KEYED_ALWAYS = {"tiling": ("tile_px", "overlap_px", "batch_tiles"), "output": ("formats", "min_area_m2", "simplify_m"),
                 "": ("tau", "precision")}
#: run options that do not change what a scene's files hold (where it runs, how it is cut into chunks)
_NOT_KEYED = {"backend", "model", "device", "adapt", "adapt_budget_s", "chunk_px"}


def _settings_key(job: Job, spec: BackendSpec, card: ModelCard | None = None) -> str:
    """Checksum of everything besides input and weights that changes the outputs (``card``: the model card; the
    building threshold and confidence floor it gives enter the key when it has them, so a card that gains one
    redoes the scenes)."""
    options = job.run_options()
    fields: dict = {"backend": spec.name, "tiling": {}, "output": {}, "geoseg": __version__}
    for f in run_fields():
        section, name = f.metadata["job"], f.name
        if section is None or name in _NOT_KEYED:
            continue
        value = getattr(options, name)
        if name in _KEYED_ALWAYS.get(section, ()) or value != getattr(DEFAULTS, name):
            (fields[section] if section in ("tiling", "output") else fields)[name] = value
    from_card = {name: getattr(card, name) for name in ("building_threshold", "min_confidence")
                 if card is not None and getattr(card, name) is not None and getattr(options, name) is None}
    if from_card:  # only when the card sets one: a card without keeps the key of earlier versions
        fields["card"] = from_card
    if job.adapt:  # adapted weights depend on the scenes of the run: such a scene is redone with them
        fields["adapt"] = {"budget_s": job.adapt_budget_s}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def _gate_sha256(spec: BackendSpec) -> str | None:
    if spec.name != "bgs":
        return None
    return file_sha256(gate_path(resolve_model_path(spec.model)))


def _load_manifest(out: Path) -> dict:
    path = out / MANIFEST
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        raise GeosegError(f"{path}: damaged manifest (not JSON); move it away to recompute every scene") from None


def _remove_partials(out: Path) -> None:
    """Staging folders and temporary files that a killed run left behind (the lock guarantees none is live)."""
    for leftover in list(out.glob(f"*/{STAGING_PREFIX}*")) + list(out.glob(".*.tmp-*")) + list(out.glob(".stac.partial-*")):
        shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink(missing_ok=True)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _write_result_catalog(out: Path, job: Job, scenes: list[SceneRef], folders: dict[str, str], manifest: dict,
                          provenance: dict) -> None:
    """OUT/stac/: one item per scene of the catalog that is done, with its outputs as assets (written whole)."""
    catalog = pystac.Catalog(f"{job.name}-results", f"geoseg results of job {job.name} over {job.catalog}")
    for scene in scenes:
        entry = manifest.get(scene.id, {})
        folder = out / folders[scene.id]
        if entry.get("status") != "done" or not (folder / "mask.tif").exists():
            continue
        # the item is laid out as stac/<id>/<id>.json: its id is the scene's safe folder name, never the input's raw
        # id (``../../x`` or an absolute path would place the JSON outside OUT); the raw id is kept as a property
        item = scene_item(folder / "mask.tif", folders[scene.id])
        item.properties["geoseg:source_id"] = scene.id
        item.assets.clear()
        item.datetime = scene.datetime or item.datetime
        for name in entry["outputs"]:
            if is_sidecar(name):
                continue  # parts of a format's file (the shapefile's .shx, .dbf...), which is one asset
            role = "data" if name in ("mask.tif", "probability.tif") or name.startswith("buildings") else "metadata"
            role = "overview" if name == "preview.png" else role
            item.add_asset(Path(name).stem if not name.startswith("buildings") else name.replace(".", "-"),
                           pystac.Asset(str((folder / name).resolve()),
                                        media_type=media_type(name) or MEDIA_TYPES.get(Path(name).suffix),
                                        roles=[role], title=name))
        item.properties.update({k: v for k, v in provenance.items() if v is not None})
        item.properties.update({"geoseg:input_sha256": entry["input_sha256"], "geoseg:seconds": entry["seconds"],
                                "geoseg:buildings": entry["buildings"], "geoseg:processed": entry["finished_at"],
                                "geoseg:decoder_execution_rate": entry["decoder_execution_rate"]})
        if scene.item_href:
            item.add_link(pystac.Link("derived_from", scene.item_href, pystac.MediaType.JSON))
        catalog.add_item(item)
    target, tmp = out / "stac", out / f".stac.partial-{os.getpid()}"
    catalog.normalize_hrefs(str(target.resolve()))
    catalog.make_all_asset_hrefs_relative()
    catalog.save(pystac.CatalogType.SELF_CONTAINED, dest_href=str(tmp))
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)


def _markdown(summary: dict) -> str:
    lines = [f"# {summary['job']}: {summary['done']} done, {summary['skipped']} skipped, {summary['failed']} failed",
             "", f"catalog `{summary['catalog']}`, model {summary['geoseg:model']} ({summary['geoseg:backend']}), "
             f"geoseg {summary['geoseg:version']}, {summary['seconds']} s, finished {summary['finished_at']}", "",
             "| scene | status | seconds | buildings | decoder rate | error |", "|---|---|---|---|---|---|"]
    for r in summary["per_scene"]:
        error = (r.get("error") or "").replace("|", "\\|")
        lines.append(f"| {r['scene']} | {r['status']} | {r.get('seconds', '')} | {r.get('buildings', '')} | "
                     f"{r.get('decoder_execution_rate', '')} | {error} |")
    return "\n".join(lines) + "\n"
