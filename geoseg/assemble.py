"""Finishing a scene from its chunks' pieces (:mod:`geoseg.tasks`), on workers, in memory bounded by one chunk.

* **Rasters**: a VRT mosaics the chunks' tiled GeoTIFF pieces (with the probability's internal mask and the
  mask's class tags); GDAL's COG driver reads it block by block into the final COG. No step holds the scene.
* **Vectors**: the pieces that touch an inner window border are merged (one building across a chunk border or
  corner is one polygon, as in :func:`geoseg.vectorise.merge_border_pieces`), georeferenced, and each given the
  chunk that holds its top-left pixel. Then chunk by chunk (row-major), that chunk's own polygons and the merged
  ones it holds are ordered by top-left pixel, numbered on from the previous chunk (``id`` 1..n over the scene),
  and appended to every vector file: GeoPackage and Shapefile by OGR append, GeoParquet as one row group per
  chunk, GeoJSON (EPSG:4326, RFC 7946) as features written on. The preview is drawn the same way.
* **Instances** (instance models): the kept instances of all chunks make the polygons and the instance raster
  (:func:`geoseg.georeference.instances_to_frame`, :func:`write_instance_raster`); they are one per building, small,
  and read once.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING
from xml.sax.saxutils import escape, quoteattr

import numpy as np
import rasterio
from pyproj import CRS

from .chunk import Chunk
from .overviews import level_chunk, level_grid
from .read import Grid, SceneReader
from .stitch import MASK_NODATA
from .staging import FinishResults, SceneWork, VectorsWritten, load_instances, load_pieces, piece_path
from .georeference import instances_to_frame, pieces_to_frame
from .vectorise import merge_border_pieces
from .formats import REGISTRY
from .write import Preview, write_cog

if TYPE_CHECKING:
    import geopandas as gpd


def mosaic_vrt(pieces: list[tuple[Path, Chunk]], grid: Grid, path: Path, nodata: int | None = None,
               with_mask: bool = False, tags: dict | None = None, overviews: list[Path] = ()) -> Path:
    """A VRT of the scene grid made of chunk pieces (each placed at its core); ``with_mask``: the pieces' internal
    masks become the VRT's mask; ``tags``: dataset metadata; ``overviews``: datasets (VRTs of the same kind) that
    are its overview levels, for the band and its mask."""
    t = grid.transform

    def sources(band: str) -> str:
        return "".join(
            f"<SimpleSource><SourceFilename relativeToVRT=\"0\">{escape(str(p))}</SourceFilename>"
            f"<SourceBand>{band}</SourceBand><SrcRect xOff=\"0\" yOff=\"0\" xSize=\"{c.width}\" ySize=\"{c.height}\"/>"
            f"<DstRect xOff=\"{c.col_off}\" yOff=\"{c.row_off}\" xSize=\"{c.width}\" ySize=\"{c.height}\"/></SimpleSource>"
            for p, c in pieces)

    def levels(band: str) -> str:
        return "".join(f"<Overview><SourceFilename relativeToVRT=\"0\">{escape(str(o))}</SourceFilename>"
                       f"<SourceBand>{band}</SourceBand></Overview>" for o in overviews)

    metadata = "".join(f"<MDI key={quoteattr(k)}>{escape(str(v))}</MDI>" for k, v in (tags or {}).items())
    xml = (f"<VRTDataset rasterXSize=\"{grid.width}\" rasterYSize=\"{grid.height}\">"
           f"<SRS>{escape(grid.crs_wkt)}</SRS><GeoTransform>{t.c!r}, {t.a!r}, {t.b!r}, {t.f!r}, {t.d!r}, {t.e!r}</GeoTransform>"
           + (f"<Metadata>{metadata}</Metadata>" if metadata else "")
           + "<VRTRasterBand dataType=\"Byte\" band=\"1\">"
           + (f"<NoDataValue>{nodata}</NoDataValue>" if nodata is not None else "") + sources("1") + levels("1")
           + "</VRTRasterBand>"
           + (f"<MaskBand><VRTRasterBand dataType=\"Byte\">{sources('mask,1')}{levels('mask,1')}</VRTRasterBand></MaskBand>"
              if with_mask else "")
           + "</VRTDataset>\n")
    path.write_text(xml)
    return path


def assemble_cog(work: SceneWork, chunks: list[Chunk], kind: str) -> float:
    """``mask.tif`` or ``probability.tif`` in the staging folder, from the chunks' pieces, with the overview levels
    the chunks made (:mod:`geoseg.overviews`) where they made them; returns seconds."""
    started = time.perf_counter()
    staging = Path(work.staging)
    categorical = kind == "mask"
    shape = dict(nodata=MASK_NODATA if categorical else None, with_mask=not categorical)
    levels = [mosaic_vrt([(piece_path(staging, f"{kind}-o{f}", c.index), level_chunk(c, f)) for c in chunks],
                         level_grid(work.grid, f), staging / "pieces" / f"{kind}-o{f}.vrt", **shape)
              for f in work.overview_factors]
    vrt = mosaic_vrt([(piece_path(staging, kind, c.index), c) for c in chunks], work.grid,
                     staging / "pieces" / f"{kind}.vrt", tags=work.mask_tags if categorical else None,
                     overviews=levels, **shape)
    write_cog(str(vrt), str(staging / f"{kind}.tif"), categorical=categorical, own_overviews=bool(levels))
    return time.perf_counter() - started


def finishing_steps(work: SceneWork, chunks: list[Chunk], formats: list[str], frames: dict | None = None) -> dict:
    """The finishing of a scene as independent steps ``kind -> (function, *arguments)``: the two COGs and the
    vector files with the preview (for instance models, with the instance raster). The COG steps return their
    seconds, the vector step a :class:`geoseg.staging.VectorsWritten`. ``frames``: chunk index -> its final
    polygons, where they are still in memory (see :func:`write_scene_vectors`)."""
    if work.owned is not None:
        vectors = (write_scene_instances, work, chunks, formats)
    else:
        vectors = (write_scene_vectors, work, chunks, formats, frames)
    return {"mask": (assemble_cog, work, chunks, "mask"), "probability": (assemble_cog, work, chunks, "probability"),
            "vectors": vectors}


def finish_scene(work: SceneWork, chunks: list[Chunk], formats: list[str], frames: dict | None = None) -> FinishResults:
    """All finishing steps, one after another, in this process."""
    steps = finishing_steps(work, chunks, formats, frames)
    return FinishResults.of({kind: fn(*args) for kind, (fn, *args) in steps.items()})


def write_scene_vectors(work: SceneWork, chunks: list[Chunk], formats: list[str],
                        frames: dict | None = None) -> VectorsWritten:
    """The scene's vector files and preview from its chunks (module docstring). ``frames``: chunk index -> that
    chunk's final polygons as the chunk task made them, for a scene finished by its one chunk task (no trip
    through ``buildings-NNNNN.parquet``); other chunks' are read from their pieces."""
    import geopandas as gpd  # on workers only: the driver never imports geopandas (0.4 s of every run's start)
    import pandas as pd

    started = time.perf_counter()
    staging = Path(work.staging)
    crs = CRS.from_wkt(work.grid.crs_wkt)
    border = [p for c in chunks for p in load_pieces(piece_path(staging, "chunk", c.index, ".npz"))]
    merged, home = None, np.zeros(0, int)
    if border:  # most chips and small scenes have none: no frame to build
        merged = pieces_to_frame(merge_border_pieces(border), work.grid, work.gsd_m, work.vector,
                                 CRS.from_wkt(work.metric_wkt), order_keys=True).drop(columns="id")
        home = _home_chunk(merged, chunks, work.chunk_px) if len(merged) else home
    del border
    sink = VectorSink(staging, formats, crs)
    preview = _preview(work)
    next_id = 1
    for chunk in chunks:
        path = piece_path(staging, "buildings", chunk.index, ".parquet")
        if frames is not None and chunk.index in frames:
            parts = [frames[chunk.index]] if len(frames[chunk.index]) else []
        else:
            parts = [gpd.read_parquet(path)] if path.exists() else []
        if (home == chunk.index).any():
            parts.append(merged[home == chunk.index])
        if not parts:
            continue
        frame = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
        frame = frame.sort_values(["top_px", "left_px"], kind="stable").drop(columns=["top_px", "left_px"])
        frame.insert(0, "id", np.arange(next_id, next_id + len(frame), dtype=np.int64))
        next_id += len(frame)
        sink.append(gpd.GeoDataFrame(frame.reset_index(drop=True), geometry="geometry", crs=crs))
        preview.draw(frame.geometry, work.grid)
    names = sink.close()
    preview.save(staging / "preview.png")
    return VectorsWritten(next_id - 1, time.perf_counter() - started, tuple(names + ["preview.png"]))


def write_scene_instances(work: SceneWork, chunks: list[Chunk], formats: list[str]) -> VectorsWritten:
    """Instance models: polygons, ``instances.tif`` and the preview from the chunks' kept instances."""
    started = time.perf_counter()
    staging = Path(work.staging)
    instances = [i for c in chunks for i in load_instances(piece_path(staging, "chunk", c.index, ".npz"))]
    frame, kept = instances_to_frame(instances, work.grid, work.gsd_m, work.vector)
    probability = mosaic_vrt([(piece_path(staging, "probability", c.index), c) for c in chunks], work.grid,
                             staging / "pieces" / "valid.vrt", with_mask=True)
    write_instance_raster(kept, work.grid, str(probability), str(staging / "pieces" / "instances.raw.tif"))
    write_cog(str(staging / "pieces" / "instances.raw.tif"), str(staging / "instances.tif"), categorical=True)
    sink = VectorSink(staging, formats, frame.crs)
    sink.append(frame)
    preview = _preview(work)
    preview.draw(frame.geometry, work.grid)
    preview.save(staging / "preview.png")
    return VectorsWritten(len(frame), time.perf_counter() - started,
                          tuple(["instances.tif"] + sink.close() + ["preview.png"]), len(instances))


def _home_chunk(frame: gpd.GeoDataFrame, chunks: list[Chunk], chunk_px: int) -> np.ndarray:
    """Index of the chunk holding each polygon's top-left pixel (chunks are row-major on a ``chunk_px`` grid)."""
    n_cols = len({c.col_off for c in chunks})
    return (frame["top_px"].to_numpy(int) // chunk_px) * n_cols + frame["left_px"].to_numpy(int) // chunk_px


def save_preview_base(staging: str | Path, reader: SceneReader, overview: tuple[np.ndarray, np.ndarray]) -> None:
    """The preview's image (the overview the driver read for the stretch, as 8-bit RGB) for the finishing step,
    which would otherwise read the scene a second time (3 s on a 20000 px scene without overviews)."""
    raw, valid = overview
    rgb = np.rint(reader.normalise(raw, valid) * 255).astype(np.uint8)
    path = Path(staging) / "pieces" / "preview-base.npz"
    try:
        np.savez(path, rgb=rgb, valid=valid)
    except OSError as err:  # numpy's error names no file; the one line the user gets should
        raise OSError(err.errno, err.strerror or str(err), str(path)) from None


def _preview(work: SceneWork) -> Preview:
    with np.load(Path(work.staging) / "pieces" / "preview-base.npz") as base:
        rgb, valid = base["rgb"], base["valid"]
    return Preview(rgb, valid, rgb.shape[-1] / work.grid.width)


class VectorSink:
    """A scene's vector files (:mod:`geoseg.formats`), written chunk by chunk (module docstring); an empty scene
    still gets valid empty layers."""

    def __init__(self, staging: Path, formats: list[str], crs: CRS):
        self.staging, self.formats = staging, [REGISTRY[key] for key in formats]
        self.writers = [f.open(staging / f.file_name, crs) for f in self.formats]

    def append(self, frame: gpd.GeoDataFrame) -> None:
        for writer in self.writers:
            writer.append(frame)

    def close(self) -> list[str]:
        """Finish every file; returns the file names written (each format's sidecars before its main file)."""
        for writer in self.writers:
            writer.close()
        return [name for f in self.formats for name in f.written(self.staging)]


def write_instance_raster(instances: list, grid: Grid, valid_path: str, path: str, strip_px: int = 1024) -> None:
    """uint32 ids (position in ``instances`` + 1), written in strips of rows; the higher score wins overlaps;
    nodata (0xFFFFFFFF) where ``valid_path``'s mask (the probability raster) says the input was invalid."""
    nodata = np.iinfo(np.uint32).max
    profile = dict(driver="GTiff", width=grid.width, height=grid.height, count=1, dtype="uint32", crs=grid.crs,
                   transform=grid.transform, tiled=True, blockxsize=256, blockysize=256, nodata=nodata)
    by_score = np.array(sorted(range(len(instances)), key=lambda i: instances[i].score), dtype=np.int64)
    first_row = np.array([instances[i].row_px for i in by_score], dtype=np.int64)
    end_row = first_row + np.array([instances[i].mask.shape[0] for i in by_score], dtype=np.int64)
    with rasterio.open(valid_path) as valid_ds, rasterio.open(path, "w", **profile) as dst:
        for top in range(0, grid.height, strip_px):
            bottom = min(top + strip_px, grid.height)
            strip = np.zeros((bottom - top, grid.width), np.uint32)
            for i in by_score[(first_row < bottom) & (end_row > top)].tolist():  # only those in the strip
                inst = instances[i]
                r0, r1 = max(inst.row_px, top), min(inst.row_px + inst.mask.shape[0], bottom)
                sub = inst.mask[r0 - inst.row_px : r1 - inst.row_px, : grid.width - inst.col_px]
                target = strip[r0 - top : r1 - top, inst.col_px : inst.col_px + sub.shape[1]]
                target[sub] = i + 1
            window = rasterio.windows.Window(0, top, grid.width, bottom - top)
            strip[valid_ds.read_masks(1, window=window) == 0] = nodata
            dst.write(strip, 1, window=window)
