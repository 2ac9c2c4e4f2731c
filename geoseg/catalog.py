"""STAC in and out: scenes from a static catalog, collection or ItemCollection; a catalog built from a folder of
GeoTIFFs; a result catalog of what a pipeline produced.

Input: :func:`catalog_scenes` reads a STAC JSON with pystac and returns one :class:`SceneRef` per item: the
asset named ``asset`` (a key), else the first asset with role ``role``, else the first GeoTIFF asset. Hrefs
are made absolute against the JSON that holds them, so a catalog can be moved with its scenes.

Build: :func:`build_catalog` writes a self-contained catalog (relative hrefs) with one item per GeoTIFF:
bbox and footprint in WGS84, the projection extension (EPSG code or WKT2, transform, shape, native bbox), GSD
in metres and the acquisition time from the TIFF's DATETIME tag (the file's modification time when it has
none). The catalog is written to a temporary folder and renamed into place whole.

Validation: pystac validates against the STAC core schemas it ships, offline; extension schemas would have to
be fetched from the network, so :func:`validate_offline` checks the core and reports extensions it skipped.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pystac
import rasterio
from pyproj import CRS
from rasterio.warp import transform_bounds
from shapely.geometry import box, mapping

from .errors import GeosegError
from .read import open_raster

GEOTIFF_SUFFIXES = (".tif", ".tiff")
#: file that marks a folder as a catalog ``geoseg catalog build`` wrote (and may therefore replace)
CATALOG_MARK = ".geoseg-catalog"
GEOTIFF_TYPES = (pystac.MediaType.GEOTIFF, pystac.MediaType.COG, "image/tiff")


@dataclass(frozen=True)
class SceneRef:
    """One scene of a catalog: item id, absolute path (or URL) of its image asset, the item's own href, and its
    acquisition time (for the result catalog, so the item need not be read again)."""

    id: str
    href: str
    item_href: str | None = None
    datetime: dt.datetime | None = None


def _read_stac(path: str | os.PathLike):
    """A catalog, collection or item, or an ItemCollection (a GeoJSON FeatureCollection of items, which
    ``pystac.read_file`` does not read), with its items' hrefs resolved against the file."""
    try:
        if _json_type(path) == "FeatureCollection":
            return pystac.ItemCollection.from_file(str(path))
        obj = pystac.read_file(str(path))
    except Exception as err:  # pystac raises STACTypeError, JSONDecodeError, FileNotFoundError...
        raise GeosegError(f"{path}: not a readable STAC catalog, collection or item collection "
                          f"({type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''})") from None
    return obj


def _json_type(path: str | os.PathLike) -> str | None:
    """The ``type`` of a local JSON file (None for a URL or anything unreadable: pystac says why)."""
    if "://" in str(path):
        return None
    try:
        with open(path, "rb") as f:
            return json.load(f).get("type")
    except (OSError, ValueError, AttributeError):
        return None


def catalog_scenes(path: str | os.PathLike, asset: str | None = None, role: str | None = "data") -> list[SceneRef]:
    """Scenes of a STAC catalog / collection / ItemCollection / single item (module docstring)."""
    if not Path(path).exists() and "://" not in str(path):
        raise GeosegError(f"catalog {path}: no such file")
    obj = _read_stac(path)
    if isinstance(obj, pystac.ItemCollection):
        items = list(obj.items)
    elif isinstance(obj, pystac.Item):
        items = [obj]
    else:
        try:
            items = list(obj.get_items(recursive=True))
        except RecursionError:
            raise GeosegError(f"catalog {path}: its child links lead back to a catalog above them (a cycle)") from None
        except (pystac.STACError, OSError, ValueError) as err:  # a child or item link to nothing, or to no STAC
            reason = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
            raise GeosegError(f"catalog {path}: a child or item link cannot be read ({reason})") from None
    scenes = []
    for item in items:
        chosen = _choose_asset(item, asset, role)
        href = chosen.get_absolute_href() or chosen.href
        if "://" not in href and not os.path.isabs(href) and "://" not in str(path):
            href = str(Path(path).resolve().parent / href)  # an ItemCollection's items have no href of their own
        scenes.append(SceneRef(item.id, href, item.get_self_href(), item.datetime))
    ids = [s.id for s in scenes]
    if len(set(ids)) != len(ids):
        raise GeosegError(f"catalog {path}: item ids are not unique ({sorted({i for i in ids if ids.count(i) > 1})[:5]})")
    return scenes


def _choose_asset(item: pystac.Item, key: str | None, role: str | None) -> pystac.Asset:
    if key is not None:
        if key not in item.assets:
            raise GeosegError(f"item {item.id}: no asset {key!r} (it has {', '.join(item.assets) or 'none'})")
        return item.assets[key]
    by_role = [a for a in item.assets.values() if role and role in (a.roles or [])]
    geotiffs = [a for a in item.assets.values() if a.media_type in GEOTIFF_TYPES or a.href.lower().endswith(GEOTIFF_SUFFIXES)]
    if by_role or geotiffs:
        return (by_role or geotiffs)[0]
    raise GeosegError(f"item {item.id}: no asset with role {role!r} and no GeoTIFF asset; choose one with --asset")


def scene_item(path: Path, item_id: str | None = None) -> pystac.Item:
    """A STAC item describing one GeoTIFF (module docstring), its asset href absolute for now."""
    try:
        with open_raster(str(path)) as ds:
            if ds.crs is None:
                raise GeosegError(f"{path}: no CRS, cannot place it in a catalog")
            bbox = list(transform_bounds(ds.crs, "EPSG:4326", *ds.bounds, densify_pts=21))
            crs = CRS.from_user_input(ds.crs)
            epsg = crs.to_epsg()
            stamp = ds.tags().get("TIFFTAG_DATETIME")
            gsd_m = _gsd_m(ds)
            proj = {"proj:shape": [ds.height, ds.width], "proj:transform": list(ds.transform)[:6],
                    "proj:bbox": list(ds.bounds)}
            proj.update({"proj:code": f"EPSG:{epsg}"} if epsg else {"proj:code": None, "proj:wkt2": crs.to_wkt()})
    except rasterio.errors.RasterioIOError as err:
        raise GeosegError(f"{path}: not a readable GeoTIFF ({str(err).splitlines()[0][:160]})") from None
    when = _tiff_datetime(stamp) or dt.datetime.fromtimestamp(path.stat().st_mtime, dt.timezone.utc)
    item = pystac.Item(item_id or path.stem, mapping(box(*bbox)), bbox, when, {"gsd": round(gsd_m, 4), **proj},
                       stac_extensions=["https://stac-extensions.github.io/projection/v2.0.0/schema.json"])
    item.add_asset("image", pystac.Asset(str(path.resolve()), media_type=pystac.MediaType.GEOTIFF, roles=["data"],
                                         title=path.name))
    return item


def _gsd_m(ds) -> float:
    """Pixel size in metres (geographic CRS: at the scene's centre latitude)."""
    res = abs(ds.transform.a)
    if ds.crs.is_geographic:
        import math

        lat = (ds.bounds.bottom + ds.bounds.top) / 2
        return res * 111_320 * math.cos(math.radians(lat))
    return res * (ds.crs.linear_units_factor[1] if ds.crs.linear_units_factor else 1.0)


def _tiff_datetime(stamp: str | None) -> dt.datetime | None:
    try:
        return dt.datetime.strptime(stamp or "", "%Y:%m:%d %H:%M:%S").replace(tzinfo=dt.timezone.utc)
    except ValueError:
        return None


def build_catalog(folder: str | os.PathLike, out_dir: str | os.PathLike, name: str | None = None,
                  copy_scenes: bool = False) -> Path:
    """A self-contained STAC catalog of every GeoTIFF in ``folder`` (sorted by name), written to ``out_dir``
    whole or not at all. ``copy_scenes``: copy the GeoTIFFs into ``out_dir/scenes`` (a portable catalog)."""
    folder, out_dir = Path(folder), Path(out_dir).resolve()  # "-o ." and "-o sub/.." name a folder by its path
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in GEOTIFF_SUFFIXES) if folder.is_dir() else []
    if not files:
        raise GeosegError(f"{folder}: no GeoTIFF files (*.tif, *.tiff) to catalog")
    _check_replaceable(out_dir, folder)
    tmp = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        catalog = pystac.Catalog(name or out_dir.name, f"GeoTIFF scenes of {folder.name}, catalogued by geoseg")
        for path in files:
            item = scene_item(path)
            if copy_scenes:
                (tmp / "scenes").mkdir(exist_ok=True)
                shutil.copy2(path, tmp / "scenes" / path.name)
                item.assets["image"].href = str((out_dir / "scenes" / path.name).resolve())
            catalog.add_item(item)
        catalog.normalize_hrefs(str(out_dir.resolve()))
        catalog.make_all_asset_hrefs_relative()
        catalog.save(pystac.CatalogType.SELF_CONTAINED, dest_href=str(tmp))
        (tmp / CATALOG_MARK).write_text("written by geoseg catalog build; a rebuild may replace this folder\n")
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        if out_dir.exists():
            out_dir.rename(old)  # a previous catalog of geoseg (checked above), kept until the new one is in place
        tmp.rename(out_dir)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir / "catalog.json"


def _check_replaceable(out_dir: Path, folder: Path) -> None:
    """``-o`` may name a new or empty folder, or a catalog an earlier ``geoseg catalog build`` wrote; never the
    folder of the input scenes or one above it (replacing it would delete them), nor anything else."""
    target, inputs, here = out_dir.resolve(), folder.resolve(), Path.cwd().resolve()
    if target == here or target in here.parents:
        raise GeosegError(f"-o {out_dir}: the catalog folder is replaced whole, and this one holds the current folder; "
                          "name a folder inside it instead, e.g. -o ./catalog")
    if not out_dir.exists():
        return
    if target == inputs or target in inputs.parents:
        raise GeosegError(f"-o {out_dir}: it holds the input scenes ({folder}), which a new catalog there would "
                          "replace; choose another folder")
    if not out_dir.is_dir():
        raise GeosegError(f"-o {out_dir}: exists and is not a folder")
    if any(out_dir.iterdir()) and not _is_geoseg_catalog(out_dir):
        raise GeosegError(f"-o {out_dir}: not empty and not a catalog geoseg wrote; choose a new or empty folder")


def _is_geoseg_catalog(folder: Path) -> bool:
    if (folder / CATALOG_MARK).exists():
        return True
    try:  # catalogs written before the mark existed say so in their description
        return "catalogued by geoseg" in json.loads((folder / "catalog.json").read_text()).get("description", "")
    except (OSError, ValueError, AttributeError):
        return False


def validate_offline(obj: pystac.STACObject) -> list[str]:
    """Validate against the STAC core schema shipped with pystac (no network). Returns the extension schemas
    that were not checked. Raises GeosegError on an invalid object."""
    d = obj.to_dict(include_self_link=False, transform_hrefs=False)
    skipped = list(d.get("stac_extensions", []))
    try:
        pystac.validation.validate_dict(d, extensions=[])
    except pystac.errors.STACValidationError as err:
        raise GeosegError(f"{obj.id}: not valid STAC ({str(err).splitlines()[0][:200]})") from None
    return skipped
