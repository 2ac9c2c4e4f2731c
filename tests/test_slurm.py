"""A real scheduler queue (issue 17): ``geoseg pipeline run`` of a job with ``cluster: slurm`` on the single-node
SLURM that ``.ci/slurm-up`` starts (Debian's slurmctld, slurmd and munge, loopback only). dask-jobqueue submits
the Dask workers with ``sbatch``; every scene is done once, and a rerun does nothing again.

Without a running SLURM the test is skipped with the reason, unless ``GEOSEG_REQUIRE_SLURM=1`` (as ``.ci/run``
sets after starting it), which turns a missing SLURM into a failure."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from test_batch import make_catalog

GEOSEG = [sys.executable, "-m", "geoseg.cli"]


def _slurm_up() -> str | None:
    """None when a SLURM partition with an idle node answers here, else why not."""
    if not shutil.which("sbatch") or not shutil.which("sinfo"):
        return "no SLURM client here (run .ci/slurm-up as root to install and start a single-node SLURM)"
    state = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20)
    if state.returncode or not {"idle", "mixed"} & set(state.stdout.split()):
        return f"SLURM does not answer or has no free node ({(state.stderr or state.stdout).strip()[:200]})"
    return None


def _worker_jobs() -> list[dict]:
    """SLURM's record of the jobs it ran or runs (kept MinJobAge = 600 s after they end)."""
    shown = subprocess.run(["scontrol", "show", "jobs", "--oneliner"], capture_output=True, text=True, timeout=20)
    jobs = []
    for line in shown.stdout.splitlines():
        fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
        jobs.append(fields)
    return jobs


@pytest.mark.timeout(600)
def test_a_slurm_job_runs_every_scene_once_through_sbatch_workers(tmp_path):
    why = _slurm_up()
    if why:
        if os.environ.get("GEOSEG_REQUIRE_SLURM") == "1":
            pytest.fail(f"GEOSEG_REQUIRE_SLURM=1 but {why}")
        pytest.skip(why)
    catalog = make_catalog(tmp_path, n=3)
    job_name = f"geoseg-slurm-test-{os.getpid()}"
    job = {"name": "slurm-test", "catalog": str(catalog), "backend": "fastscnn",
           "tiling": {"tile_px": 256, "overlap_px": 32, "batch_tiles": 2},
           "output": {"folder": str(tmp_path / "out"), "formats": ["geojson", "parquet"]},
           "cluster": {"kind": "slurm", "jobs": 1, "cores": 1, "memory": "3GB", "walltime": "00:20:00",
                       "interface": "lo", "job_extra_directives": [f"--job-name={job_name}",
                                                                   f"--output={tmp_path}/slurm-%j.out"]},
           "retries": 0}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    before = {j.get("JobId") for j in _worker_jobs()}
    first = subprocess.run(GEOSEG + ["pipeline", "run", str(path), "--quiet"], capture_output=True, text=True,
                           timeout=420, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert (summary["done"], summary["failed"], summary["skipped"]) == (3, 0, 0)
    assert all(row["attempts"] == 1 for row in summary["per_scene"])
    ran = [j for j in _worker_jobs() if j.get("JobName") == job_name and j.get("JobId") not in before]
    assert ran, "no SLURM job ran the Dask workers"
    logs = "".join(p.read_text(errors="replace") for p in tmp_path.glob("slurm-*.out"))
    assert "Starting established connection" in logs or "Registered to" in logs, logs[-2000:]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert sorted(manifest) == ["scene_0", "scene_1", "scene_2"] and all(e["status"] == "done" for e in manifest.values())
    again = subprocess.run(GEOSEG + ["pipeline", "run", str(path), "--quiet"], capture_output=True, text=True,
                           timeout=420, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    rerun = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert (rerun["done"], rerun["skipped"]) == (0, 3)  # exactly once: nothing is redone
