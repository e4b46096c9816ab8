"""Run-directory outputs: tick reports, image grids and the run directory itself.

Each tick's values are reported once and fanned out to the console, `stats.jsonl` and
TensorBoard, so the three always agree.
"""

import json
import logging
import os
import re
import resource
import time

import numpy as np
import tensorflow as tf
from absl import logging as absl_logging
from PIL import Image

from msg_tf.dataset import to_uint8

STATS_FILE = "stats.jsonl"
LOG_FILE = "log.txt"
OPTIONS_FILE = "training_options.json"


def create_run_dir(result_dir: str, description: str) -> str:
    """Create `result_dir/NNNNN-description` with the next free run number."""
    os.makedirs(result_dir, exist_ok=True)
    numbers = [int(m.group(1)) for name in os.listdir(result_dir)
               if (m := re.match(r"^(\d+)-", name))]
    run_id = max(numbers, default=-1) + 1
    path = os.path.join(result_dir, f"{run_id:05d}-{description}")
    os.makedirs(path)
    return path


def attach_log_file(run_dir: str) -> logging.Handler:
    """Copy every absl log line to `run_dir/log.txt` as well as the console."""
    handler = logging.FileHandler(os.path.join(run_dir, LOG_FILE))
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.getLogger().addHandler(handler)
    return handler


def detach_log_file(handler: logging.Handler) -> None:
    logging.getLogger().removeHandler(handler)
    handler.close()


def write_json_atomic(path: str, obj) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def truncate_stats(run_dir: str, kimg: float) -> int:
    """Drop stats.jsonl lines after `kimg` and any torn last line; return the count.

    A run killed after its newest checkpoint has reported ticks that the resumed run will
    train and report again. Keeping them would list those ticks twice.
    """
    path = os.path.join(run_dir, STATS_FILE)
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        lines = f.read().split("\n")
    kept = []
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue                    # a torn line from a kill mid-write, or the end
        if row.get("kimg", 0) <= kimg + 1e-9:
            kept.append(line)
    dropped = sum(1 for line in lines if line) - len(kept)
    if dropped:
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            f.write("".join(line + "\n" for line in kept))
        os.replace(tmp, path)
    return dropped


def memory_stats() -> dict:
    """Return the process's current and peak resident memory in GiB (Linux)."""
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with open("/proc/self/statm") as f:
        resident_pages = int(f.read().split()[1])
    return {"mem/rss_gb": resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**30,
            "mem/peak_rss_gb": peak_kib / 2**20}


def append_jsonl(path: str, record: dict) -> None:
    """Append one JSON line with a single write, then fsync.

    One write call of the whole line in append mode keeps concurrent appenders (training
    and calc_metrics.py) from splitting each other's lines on a local file system.
    """
    line = json.dumps(record, sort_keys=True) + "\n"
    with open(path, "a") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def write_metric(run_dir: str, reporter: "Reporter", name: str, results: dict, *,
                 snapshot: str, kimg: float | None, seconds: float, data: str) -> dict:
    """Append one metric result to `metric-<name>.jsonl` and TensorBoard; return the record.

    Training and calc_metrics.py both write through here, so their lines have one format.
    """
    record = {"metric": name, "results": results, "value": results.get(name),
              "snapshot": snapshot, "kimg": kimg, "time": round(seconds, 2),
              "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"), "data": data}
    append_jsonl(os.path.join(run_dir, f"metric-{name}.jsonl"), record)
    reporter.report_scalars(results, kimg or 0.0, prefix="Metrics/")
    return record


class Reporter:
    """Fan each tick's values out to the console, stats.jsonl and TensorBoard.

    With `write_files=False` (the workers other than the chief in multi-worker
    training) it only logs the tick line and writes nothing to the run directory.
    """

    def __init__(self, run_dir: str, write_files: bool = True):
        self.run_dir = run_dir
        self.writer = tf.summary.create_file_writer(run_dir) if write_files else None

    def report_tick(self, stats: dict) -> None:
        """Write one tick; `stats` must contain `tick` and `kimg`."""
        line = (f"tick {stats['tick']:<5d} kimg {stats['kimg']:<9.3f} "
                f"time {format_seconds(stats['time/total_sec']):<10s} "
                f"sec/tick {stats['time/sec_per_tick']:<8.1f} "
                f"sec/kimg {stats['time/sec_per_kimg']:<8.2f} "
                f"maintenance {stats['time/maintenance_sec']:<6.1f} "
                f"rss {stats['mem/rss_gb']:.2f}GB  "
                + "  ".join(f"{k} {v:.4f}" for k, v in stats.items() if k.startswith("Loss/")))
        absl_logging.info(line)
        if self.writer is None:
            return
        append_jsonl(os.path.join(self.run_dir, STATS_FILE), stats)
        self.report_scalars({key: value for key, value in stats.items()
                             if key not in ("tick", "kimg")}, stats["kimg"])

    def report_scalars(self, scalars: dict, kimg: float, prefix: str = "") -> None:
        """Write scalars to TensorBoard at step kimg * 1000 (the image count)."""
        if self.writer is None:
            return
        with self.writer.as_default(step=int(round(kimg * 1000))):
            for key, value in scalars.items():
                if isinstance(value, (int, float, np.integer, np.floating)):
                    tf.summary.scalar(prefix + key, value)
        self.writer.flush()

    def report_images(self, tag: str, grids: dict, kimg: float) -> None:
        """Log one uint8 grid [H, W, C] per resolution to TensorBoard as `tag/RxR`."""
        if self.writer is None:
            return
        with self.writer.as_default(step=int(round(kimg * 1000))):
            for res, grid in grids.items():
                tf.summary.image(f"{tag}/{res}x{res}", grid[np.newaxis], max_outputs=1)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h {seconds // 60 % 60:02d}m"
    return f"{seconds // 86400}d {seconds // 3600 % 24:02d}h"


def grid_shape(resolution: int) -> tuple[int, int]:
    """Return (columns, rows) of the snapshot grids: about 512-1024 pixels wide."""
    columns = int(np.clip(1024 // resolution, 4, 8))
    rows = int(np.clip(768 // resolution, 3, 8))
    return columns, rows


def make_grid(images: np.ndarray, columns: int) -> np.ndarray:
    """Tile images [N, H, W, C] in [-1, 1] into one uint8 image, row by row."""
    images = to_uint8(images)
    n, h, w, c = images.shape
    rows = -(-n // columns)
    grid = np.zeros((rows * h, columns * w, c), np.uint8)
    for i, image in enumerate(images):
        row, column = divmod(i, columns)
        grid[row * h:(row + 1) * h, column * w:(column + 1) * w] = image
    return grid


def save_png_atomic(grid: np.ndarray, path: str) -> None:
    """Save a uint8 [H, W, 1 or 3] image; a kill mid-write leaves no truncated PNG."""
    image = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    tmp = f"{path}.tmp"
    image.save(tmp, format="PNG")
    os.replace(tmp, path)


def save_scale_grids(images_per_scale: list, prefix: str, run_dir: str,
                     columns: int) -> dict:
    """Save one PNG grid per scale as `<prefix>-RxR.png`; return {res: grid}."""
    grids = {}
    for images in images_per_scale:
        images = np.asarray(images)
        res = images.shape[1]
        grids[res] = make_grid(images, columns)
        save_png_atomic(grids[res], os.path.join(run_dir, f"{prefix}-{res}x{res}.png"))
    return grids
