"""A whole campaign generation on a large space, on a Dask LocalCluster, with bounded memory.

    python benchmarks/large_campaign.py --out benchmarks/large_campaign.json [--archs 2000]

Makes a benchmark folder of ``--archs`` random NB-201 architectures with `gp-proxy bench
import` (a random-init ResNet-56 teacher, 8 Fashion-MNIST probe images at 32x32, and a
synthetic accuracy column: memory, not ranking, is measured here), then runs `Campaign` with
``backend=dask`` on a 2-worker LocalCluster for one generation (``population`` 12, steady
state), ``held_bytes`` = ``--held-mb``. The feature cache is built on the cluster (one task
per architecture) and read lazily. Recorded: the cache's size on disk, each worker's and the
campaign process's resident-memory high-water mark (VmHWM), and the wall times.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from perf_backends import peak_rss_mb  # noqa: E402

from gp_proxy.config import load_config  # noqa: E402
from gp_proxy.evolve.campaign import Campaign  # noqa: E402
from gp_proxy.spaces import get_space  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/large_campaign.json")
    ap.add_argument("--archs", type=int, default=2000)
    ap.add_argument("--held-mb", type=int, default=256)
    ap.add_argument("--work", default="", help="keep the benchmark and cache here")
    args = ap.parse_args()
    from distributed import Client, LocalCluster

    work = Path(args.work or tempfile.mkdtemp(prefix="gp-proxy-large-"))
    bench = work / "nb201-bench"
    report: dict[str, Any] = {"command": " ".join(["python", *sys.argv]),
                              "architectures": args.archs}
    if not (bench / "ground_truth.csv").exists():
        space = get_space("nb201")
        rng = random.Random(0)
        archs = list(dict.fromkeys(space.sample(rng) for _ in range(args.archs * 2)))
        table = work / "synthetic.csv"
        with table.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["arch", "acc"])
            for a in archs[:args.archs]:  # a seeded pseudo-accuracy: only memory is measured
                h = int(hashlib.sha1(a.encode()).hexdigest()[:8], 16) / 16**8
                w.writerow([a, f"{80 + 10 * h:.3f}"])
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import sys; from gp_proxy.cli import main; "
                        "sys.exit(main(sys.argv[1:]))", "bench", "import", str(table),
                        str(bench), "--space", "nb201", "--teacher", "resnet56", "--columns", "acc",
                        "--image-size", "32", "--probe-size", "8"], check=True, cwd=ROOT)
        report["import_s"] = time.perf_counter() - t
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=":0", silence_logs=logging.ERROR) as cluster, \
            Client(cluster) as client:
        cfg = load_config(None, [
            f"benchmark={bench}", "target=acc", "teacher_init=random", "act_samples=2",
            "population=12", "generations=1", "noise_check=false", "backend=dask",
            f"scheduler={cluster.scheduler_address}", f"held_bytes={args.held_mb << 20}",
            f"cache_dir={work / 'cache'}"])
        t = time.perf_counter()
        c = Campaign(cfg, work / "run")
        report["campaign_setup_s"] = time.perf_counter() - t  # includes the cache build
        t = time.perf_counter()
        c.run()
        report["campaign_run_s"] = time.perf_counter() - t
        report["evaluations"] = c.evaluations
        report["worker_peak_mb"] = client.run(peak_rss_mb)
        folder = next((work / "cache").iterdir())
        report["cache_mb_on_disk"] = sum(
            f.stat().st_size for f in (folder / "archs").iterdir()) / 2**20
    report["campaign_process_peak_mb"] = peak_rss_mb()
    report["held_mb_all_workers"] = args.held_mb
    print(json.dumps(report, indent=1))
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
