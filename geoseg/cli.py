"""Command line: ``geoseg run``, ``geoseg demo``. Errors in the input are one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import GeosegError
from .options import DEFAULTS


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated band numbers like 1,2,3, got {text!r}") from None


def _formats(text: str) -> list[str]:
    return [v.strip().lower() for v in text.split(",") if v.strip()]


def _add_run_options(p: argparse.ArgumentParser) -> None:
    """The flags of ``geoseg run`` and ``geoseg demo``, one per :class:`geoseg.options.RunOptions` field, as the
    field declares it (flag, help, type, default)."""
    from types import UnionType
    from typing import Literal, Union, get_args, get_origin, get_type_hints

    from .backends import REGISTRY as BACKENDS
    from .formats import REGISTRY as FORMATS
    from .options import RunOptions, run_fields

    parsers = {list[int]: _int_list, list[str]: _formats}
    hints = get_type_hints(RunOptions)
    p.add_argument("-o", "--out", default="geoseg-output", help="output folder; results go to OUT/<scene-stem>/")
    for f in run_fields():
        kind, default = hints[f.name], getattr(DEFAULTS, f.name)
        text = f.metadata["help"].format(backends=", ".join(BACKENDS), formats=",".join(FORMATS))
        if kind is bool:
            action = "store_false" if f.metadata.get("inverted") else "store_true"
            p.add_argument(f.metadata["flag"], action=action, dest=f.name, help=text)
            continue
        if default not in (None, False) and "default" not in text:
            text += f" (default: {','.join(default)})" if isinstance(default, list) else f" (default {default:g})" \
                if isinstance(default, float) else f" (default {default})"
        if get_origin(kind) in (Union, UnionType):  # X | None: the flag reads an X
            kind = next(k for k in get_args(kind) if k is not type(None))
        typed = {"choices": list(get_args(kind))} if get_origin(kind) is Literal else {"type": parsers.get(kind, kind)}
        p.add_argument(f.metadata["flag"], dest=f.name, default=default, help=text, **typed)


def _options(args: argparse.Namespace):
    from .pipeline import RunOptions

    fields = RunOptions.__dataclass_fields__
    opts = RunOptions(**{k: v for k, v in vars(args).items() if k in fields})
    return opts.check()  # before any cluster starts: --workers -1 would wait forever for workers


def _print_result(summary, out_dir: Path) -> None:
    print(f"{summary.scene}: {summary.buildings} buildings, {summary.tiles_decoded}/{summary.tiles_total} "
          f"tiles decoded, {summary.megapixels} Mpx in {summary.seconds} s ({summary.megapixels_per_second} Mpx/s; "
          f"workers {summary.worker_s} s, driver {summary.driver_s} s)")
    print(f"outputs in {out_dir}/: {', '.join(summary.outputs)}, summary.json")
    if not summary.model_trained:
        print(f"note: model {summary.model} is an untrained placeholder: the outputs exercise the pipeline, "
              "they do not show real buildings")


def cmd_run(args: argparse.Namespace) -> int:
    """Run the scenes together on one cluster (or in-process when they are too few tiles to pay for one). A scene
    with bad input is reported and the others go on. Each scene gets its own output folder, named before any
    work (scenes sharing a file name get their parent folders' names appended: ``OUT/scene-a``, ``OUT/scene-b``)."""
    from .cluster import dask_client
    from .pipeline import run_scenes, run_workers
    from .scene import check_file
    from .write import scene_folder_names

    opts = _options(args)
    failed = 0

    def report(err: Exception) -> None:
        nonlocal failed
        if len(args.scenes) == 1:
            raise err
        print(f"geoseg: error: {err}", file=sys.stderr)
        failed += 1

    todo = []
    for scene, name in zip(args.scenes, scene_folder_names(args.scenes)):
        try:
            check_file(scene)  # no cluster is started for files that are not there
            todo.append((scene, name))
        except GeosegError as err:
            report(err)
    if not todo:
        return 2
    adapted = None
    if opts.adapt:
        from .adapt import adapt_run

        opts, adapted = adapt_run([s for s, _ in todo], args.out, opts)
    with dask_client(run_workers([s for s, _ in todo], opts), opts.scheduler) as client:
        for outcome in run_scenes(todo, args.out, opts, client, adapted=adapted):
            if isinstance(outcome.result, Exception):
                report(outcome.result)
            else:
                _print_result(outcome.result, Path(args.out) / outcome.name)
    return 2 if failed else 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The pipeline on the real scene shipped with geoseg (``--synthetic``: on a generated one of ``--size`` px)."""
    from .pipeline import run_scene

    if args.synthetic:
        from .demo import generate_scene

        scene = generate_scene(Path(args.out) / "scenes" / "demo_scene.tif", size_px=args.size, seed=args.seed)
        print(f"generated demo scene {scene} ({args.size}x{args.size} px, 0.3 m, EPSG:32636): drawn, not real imagery")
    else:
        from .samples import DEMO_ATTRIBUTION, DEMO_DESCRIPTION, sample_path

        scene = sample_path()
        print(f"demo scene {scene.name}: {DEMO_DESCRIPTION}; {DEMO_ATTRIBUTION}")
    summary = run_scene(scene, args.out, _options(args))
    _print_result(summary, Path(args.out) / scene.stem)
    print(f"look at {Path(args.out) / scene.stem / 'preview.png'}; open mask.tif and buildings.gpkg in QGIS")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .train import train

    best = train(args.config, args.out, resume=args.resume, data_root=args.data_root, seed=args.seed,
                 progress=not args.quiet, stop_after_epochs=args.stop_after, threads=args.threads, epochs=args.epochs)
    print(f"best epoch {best['epoch']}: building IoU {best['building_iou']}, mean IoU {best['mean_iou']}; "
          f"model in {Path(args.out) / 'best.safetensors'} (+ .json card)")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate, format_table

    result = evaluate(args.prediction, args.reference, polygons=args.polygons, building_class=args.building_class)
    print(format_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps({k: v for k, v in result.items() if k != "ap_records"}, indent=2) + "\n")
    for warning in result["warnings"]:
        print(f"geoseg: warning: {warning}", file=sys.stderr)
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .calibrate import calibrate, calibrate_pregate, calibrate_policy
    from .architectures import architecture
    from .card import ModelCard, resolve_model_path
    from .model import use_bf16

    if architecture(ModelCard.from_json(resolve_model_path(args.model).with_suffix(".json")).architecture).blocks:
        with tqdm(unit="tile", desc="calibrating policy", disable=args.quiet, file=sys.stderr, leave=False) as bar:
            thresholds, path = calibrate_policy(args.model, args.data, split=args.split, tile_px=args.tile_px,
                                                autocast=use_bf16(args.precision), progress=bar)
        print(f"policy thresholds written to {path}: " + ", ".join(f"tau {t}: P >= {v:.4f}" for t, v in thresholds.items()))
        return 0
    with tqdm(unit="tile", desc="calibrating", disable=args.quiet, file=sys.stderr, leave=False) as bar:
        gate, path = calibrate(args.model, args.data, out=args.out, split=args.split, tile_px=args.tile_px,
                               target_fraction=args.target_fraction, k1=args.k1, k2=args.k2,
                               target_recall=args.target_recall, per_group=args.per_group,
                               min_group_tiles=args.min_group_tiles, group_by=args.group_by,
                               autocast=use_bf16(args.precision), progress=bar, rule=args.rule)
    c = gate.calibration
    print(f"{c['tiles']} tiles ({c['target_tiles']} with buildings); stage 1: {len(gate.stage1)} channels "
          f"{c['stage1_only']}; stage 2: {len(gate.stage2)} channels; gate: {c['gate']}")
    print(f"gate written to {path} (+ {path.with_suffix('.png').name}); {gate.ops_per_tile((args.tile_px // 32) ** 2)} "
          "operations per tile" + (f"; learned head (out-of-fold): {c['linear']['out_of_fold']}" if gate.linear else ""))
    if args.pregate:
        with tqdm(unit="step", desc="training the pre-gate", disable=args.quiet, file=sys.stderr, leave=False) as bar:
            pre, pre_path = calibrate_pregate(args.model, args.data, split=args.split, tile_px=args.tile_px,
                                              target_fraction=args.target_fraction, recall=args.pregate_recall,
                                              steps=args.pregate_steps, out=args.pregate_out, progress=bar)
        print(f"pre-gate written to {pre_path}: threshold {pre.threshold:.3f}; held-out scenes "
              f"{pre.calibration['held_out']}")
    return 0


def cmd_catalog_build(args: argparse.Namespace) -> int:
    from .catalog import build_catalog

    path = build_catalog(args.folder, args.out, name=args.name, copy_scenes=args.copy)
    print(f"catalog written to {path}")
    return 0


def cmd_pipeline_run(args: argparse.Namespace) -> int:
    """Exit 0 when every scene is done (now or before), 3 when some failed (see summary.md), 2 on bad input."""
    from .batch import run_job
    from .job import load_job

    job = load_job(args.job, catalog=args.catalog, out=args.out, workers=args.workers, address=args.address)
    summary = run_job(job, progress=not args.quiet)
    print(f"{summary['job']}: {summary['done']} done, {summary['skipped']} skipped (unchanged), "
          f"{summary['failed']} failed in {summary['seconds']} s; {summary['output']}/summary.md")
    for row in summary["per_scene"]:
        if row["status"] == "failed":
            print(f"  failed: {row['scene']}: {row['error']}", file=sys.stderr)
    return 3 if summary["failed"] else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="geoseg", description="GeoTIFF scenes in, building masks and footprints out")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_run_and_demo, _add_train, _add_finetune, _add_evaluate, _add_calibrate, _add_catalog_and_pipeline):
        add(sub)
    return parser


def _add_run_and_demo(sub) -> None:
    """``geoseg run`` and ``geoseg demo``: the scene pipeline."""
    run = sub.add_parser("run", help="segment one or more GeoTIFF scenes")
    run.add_argument("scenes", nargs="+", metavar="SCENE", help="GeoTIFF scene(s)")
    _add_run_options(run)
    run.set_defaults(func=cmd_run)
    demo = sub.add_parser("demo", help="run the pipeline on the real sample scene shipped with geoseg")
    demo.add_argument("--synthetic", action="store_true",
                      help="generate a procedural scene instead (for sizes and speed, not for judging the model)")
    demo.add_argument("--size", type=int, default=2048, help="--synthetic: scene size in pixels (default 2048)")
    demo.add_argument("--seed", type=int, default=0, help="--synthetic: random seed")
    _add_run_options(demo)
    demo.set_defaults(func=cmd_demo, out="demo-output")


def _add_train(sub) -> None:
    """``geoseg train``."""
    tr = sub.add_parser("train", help="train a segmentation model from a YAML config")
    tr.add_argument("config", help="training config (YAML), e.g. geoseg/configs/buildings-unet-r18.yaml")
    tr.add_argument("-o", "--out", required=True, help="run folder: checkpoint.pt, best.safetensors + card, history")
    tr.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    tr.add_argument("--data-root", default=None, help="override the config's data_root")
    tr.add_argument("--seed", type=int, default=None, help="override the config's seed")
    tr.add_argument("--epochs", type=int, default=None, help="override the config's epochs (the schedule spans them)")
    tr.add_argument("--stop-after", type=int, default=None, help="stop after N epochs of this call (resume later)")
    tr.add_argument("--threads", type=int, default=None, help="torch threads for this run (default: the config's, else all cores)")
    tr.add_argument("--quiet", action="store_true")
    tr.set_defaults(func=cmd_train)


def _add_finetune(sub) -> None:
    """``geoseg finetune``: the default model fitted to the user's own labelled ground."""
    ft = sub.add_parser("finetune", help="fit a model to your own ground from a few labelled buildings (no YAML)")
    ft.add_argument("images", nargs="+", metavar="IMAGE", help="GeoTIFF scene(s) the labels lie on")
    ft.add_argument("--labels", required=True, help="building outlines: GeoJSON, GPKG, Shapefile or GeoParquet, any CRS")
    ft.add_argument("-o", "--out", required=True, help="NAME.safetensors to write (its card NAME.json beside it)")
    ft.add_argument("--base", default=None, help="model to start from (default: the shipped default)")
    ft.add_argument("--area", default=None,
                    help="polygons where the labels are complete (default: the labels' extent on each image)")
    ft.add_argument("--minutes", type=float, default=10.0, help="time budget for training (default 10)")
    ft.add_argument("--steps", type=int, default=100_000, help="at most this many steps (default: the time decides)")
    ft.add_argument("--seed", type=int, default=0)
    ft.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    ft.add_argument("--quiet", action="store_true", help="no progress lines")
    ft.set_defaults(func=cmd_finetune)


def cmd_finetune(args: argparse.Namespace) -> int:
    from .finetune import finetune

    path, result = finetune(args.images, args.labels, args.out, base=args.base, area=args.area, minutes=args.minutes,
                            steps=args.steps, seed=args.seed, threads=args.threads, progress=not args.quiet)
    before, after = result.before, result.after
    print(f"{path}: {result.steps} steps in {result.seconds} s; held-out building IoU {before['building_iou']:.3f} -> "
          f"{after['building_iou']:.3f} (step {result.best_step}"
          f"{', the base model itself: no step did better' if not result.best_step else ''}), SpaceNet F1 "
          f"{before['spacenet_f1']:.3f} -> {after['spacenet_f1']:.3f}; use it with --model {path}")
    return 0


def _add_evaluate(sub) -> None:
    """``geoseg evaluate``."""
    ev = sub.add_parser("evaluate", help="pixel IoU and SpaceNet F1 of a prediction against reference labels")
    ev.add_argument("prediction", help="a geoseg run output folder (OUT/<scene>) or a class raster")
    ev.add_argument("--reference", required=True, help="reference buildings: vector file (any CRS) or 0/1 raster")
    ev.add_argument("--polygons", default=None, help="predicted polygons (default: the run folder's, else from the mask)")
    ev.add_argument("--building-class", type=int, default=None, help="building value in the prediction raster")
    ev.add_argument("--json", default=None, help="also write the metrics to this JSON file")
    ev.set_defaults(func=cmd_evaluate)


def _add_calibrate(sub) -> None:
    """``geoseg calibrate``: the BGS gate, or a SegBlocks policy's thresholds."""
    ca = sub.add_parser("calibrate", help="calibrate the BGS-Net bottleneck gate of a model (no retraining); "
                                          "for a SegBlocks model: its policy's threshold for each tau")
    ca.add_argument("--model", default=None, help="model name or NAME.safetensors (default: the default model)")
    ca.add_argument("--data", action="append", required=True, help="training config(s) (YAML) whose tiles calibrate")
    ca.add_argument("-o", "--out", default=None, help="gate JSON (default: NAME.gate.json beside the model)")
    ca.add_argument("--split", default="train", choices=["train", "val"], help="which scenes (default: train)")
    ca.add_argument("--tile", type=int, default=DEFAULTS.tile_px, dest="tile_px",
                    help="tile size in pixels, as in `geoseg run`")
    ca.add_argument("--target-fraction", type=float, default=0.005, help="building share that makes a tile a target")
    ca.add_argument("--k1", type=int, default=10, help="stage-1 (OR) channels")
    ca.add_argument("--k2", type=int, default=3, help="stage-2 (AND, false-alarm filter) channels; 0: none")
    ca.add_argument("--target-recall", type=float, default=None,
                    help="pick thresholds for this building-tile recall at the lowest execution rate (default: Youden)")
    ca.add_argument("--per-group", action="store_true",
                    help="with --target-recall: meet it in every group (--group-by) with >= --min-group-tiles "
                         "building tiles, not only pooled")
    ca.add_argument("--group-by", default="place", choices=["place", "folder"],
                    help="with --per-group: a group is a place (default) or a scene folder (e.g. each Dubai tile)")
    ca.add_argument("--min-group-tiles", type=int, default=10,
                    help="with --per-group: groups with fewer building tiles are not held to the target (default 10)")
    ca.add_argument("--rule", default="paper", choices=["paper", "linear"],
                    help="which rule the gate file opens tiles by (`geoseg run --gate` overrides it); the learned "
                         "head is fitted with --per-group")
    ca.add_argument("--pregate", action="store_true",
                    help="also train the thumbnail pre-gate of the cascade (NAME.pregate.safetensors; minutes)")
    ca.add_argument("--pregate-recall", type=float, default=0.99, help="--pregate: building-tile recall it keeps")
    ca.add_argument("--pregate-steps", type=int, default=2000, help="--pregate: training steps")
    ca.add_argument("--pregate-out", default=None, help="--pregate: where (default: beside the model)")
    ca.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    ca.add_argument("--quiet", action="store_true")
    ca.set_defaults(func=cmd_calibrate)


def _add_catalog_and_pipeline(sub) -> None:
    """``geoseg catalog build`` and ``geoseg pipeline run``: catalogs and batch jobs."""
    cat = sub.add_parser("catalog", help="STAC catalogs of scenes").add_subparsers(dest="action", required=True)
    cb = cat.add_parser("build", help="a STAC catalog of the GeoTIFFs in a folder")
    cb.add_argument("folder", help="folder of GeoTIFF scenes")
    cb.add_argument("-o", "--out", required=True, help="catalog folder to write, e.g. catalogs/NAME")
    cb.add_argument("--name", default=None, help="catalog id (default: the folder name of --out)")
    cb.add_argument("--copy", action="store_true", help="copy the scenes into OUT/scenes (a portable catalog)")
    cb.set_defaults(func=cmd_catalog_build)
    pipe = sub.add_parser("pipeline", help="batch jobs over catalogs").add_subparsers(dest="action", required=True)
    pr = pipe.add_parser("run", help="run a job file (pipelines/*.yaml) over its catalog, exactly once per scene")
    pr.add_argument("job", help="job file (YAML)")
    pr.add_argument("--catalog", default=None, help="override the job's catalog")
    pr.add_argument("--out", default=None, help="override the job's output folder")
    pr.add_argument("--workers", type=int, default=None, help="override the cluster: LocalCluster of N workers (0: in-process)")
    pr.add_argument("--address", default=None, help="override the cluster: an existing scheduler, tcp://HOST:PORT")
    pr.add_argument("--quiet", action="store_true")
    pr.set_defaults(func=cmd_pipeline_run)


def main(argv: list[str] | None = None) -> int:
    import logging

    # GDAL's messages reach Python's logging; unhandled, each would be one more stderr line beside ours
    logging.getLogger("rasterio").addHandler(logging.NullHandler())
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except GeosegError as err:
        print(f"geoseg: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("geoseg: interrupted", file=sys.stderr)
        return 130
    except OSError as err:  # a full disk, a folder that vanished, a permission taken away mid-run
        print(f"geoseg: error: {_os_error_line(err, getattr(args, 'out', None))}", file=sys.stderr)
        return 1


def _os_error_line(err: OSError, out: str | None) -> str:
    """One line for a failed write or read: the file, the system's reason, GDAL's reason (rasterio chains it), and
    the free space where the outputs go when it is nearly none."""
    import shutil

    line = (f"{err.filename}: " if err.filename else "") + str(err.strerror or err).splitlines()[0]
    if err.__cause__ is not None:
        line += f" ({str(err.__cause__).splitlines()[0][:200]})"
    folder = Path(out) if out else None
    while folder is not None and not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if folder is not None and folder.exists() and shutil.disk_usage(folder).free < 64 * 1024 * 1024:
        line += f"; the disk holding {out} has {shutil.disk_usage(folder).free // 1024 // 1024} MiB free"
    return line


if __name__ == "__main__":
    sys.exit(main())
