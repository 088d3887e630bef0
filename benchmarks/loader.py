"""How much faster do shards feed training than decoding the raw files?

Times the loader (batches of 64, training split) over the demo cohort read two ways, each with
0, 1 and 2 worker processes: decoding the raw PNG / WFDB / text files (`ManifestDataset`) and
slicing the memory-mapped shards (`ShardDataset`). Prints samples/s and the ratio shards / raw.

    python benchmarks/loader.py [--cohort DIR] [--n 600] [--batches 8]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from medtriad.config import load_config
from medtriad.data.dataset import EpochBatches, ManifestDataset, make_loader
from medtriad.data.shards import ShardDataset, prepare_shards_for_config
from medtriad.data.synthetic.cohort import generate_cohort

ROOT = Path(__file__).resolve().parents[1]


def rate(dataset: object, workers: int, batches: int, batch_size: int = 64) -> float:
    """Samples per second over `batches` batches, after the workers have started."""
    def forever():
        epoch = 0
        while True:
            yield from make_loader(dataset, EpochBatches(len(dataset), batch_size, seed=0, epoch=epoch), workers=workers)
            epoch += 1

    it = forever()
    next(it)  # start-up (worker spawn) is not throughput
    t0 = time.perf_counter()
    n = 0
    for _ in range(batches):
        n += len(next(it))
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cohort", type=Path, help="an existing demo cohort (manifest folder)")
    ap.add_argument("--n", type=int, default=800, help="studies to generate when --cohort is not given")
    ap.add_argument("--batches", type=int, default=8)
    args = ap.parse_args()
    cfg = load_config(ROOT / "configs" / "demo.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        cohort = args.cohort or Path(tmp) / "cohort"
        if args.cohort is None:
            generate_cohort(cohort, n=args.n, seed=0, progress=False)
        shards = prepare_shards_for_config(cohort / "manifest.parquet", Path(tmp) / "shards", cfg, progress=False)
        raw = ManifestDataset(cohort / "manifest.parquet", cfg.data, split="train")
        fast = ShardDataset(shards, split="train")
        print(f"{'workers':>7} | {'raw files (samples/s)':>22} | {'shards (samples/s)':>19} | {'shards / raw':>12}")
        print("-" * 70)
        for workers in (0, 1, 2):
            r = rate(raw, workers, args.batches)
            s = rate(fast, workers, args.batches * 8)
            print(f"{workers:>7} | {r:>22.0f} | {s:>19.0f} | {s / r:>11.1f}x")


if __name__ == "__main__":
    main()
