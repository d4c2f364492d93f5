"""Benchmark: the project's heavy-tail fit (SPEC 8.2 `csn-mle`) against `powerlaw` 2.0, side by side.

Data: the real per-module statistics of all-MiniLM-L6-v2 (52 modules) and SmolLM2-135M-Instruct
(272 modules) kept in tests/compute/data/heavy_tail_real.json, and seeded synthetic Pareto samples
(pdf exponent 1.5, 2.5 and 3.5; 200 and 2,000 values). For every set both fits run in turn
(interleaved, `--repeats` times, the median kept), in this one process with one thread; reported:
the time of each, their ratio, whether x_min agrees and the exponent difference, and for the
synthetic sets the error of each fit's exponent against the known one.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_heavy_tail.py [--repeats 3] \
        [--out benchmarks/results/heavy_tail]   # writes OUT.json and OUT.md

Run it alone on the machine: the times are wall-clock.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

REAL = ROOT / "tests" / "compute" / "data" / "heavy_tail_real.json"
ALPHAS = (1.5, 2.5, 3.5)
SIZES = (200, 2000)


def data_sets() -> list[tuple[str, np.ndarray, float | None]]:
    """(name, values, known pdf exponent or None) of every set."""
    real = json.loads(REAL.read_text(encoding="utf-8"))
    out: list[tuple[str, np.ndarray, float | None]] = []
    for model, entry in real["models"].items():
        for name, values in entry["sets"].items():
            out.append((f"{model} {name}", np.asarray(values, dtype=np.float64), None))
    rng = np.random.default_rng(0)
    for alpha in ALPHAS:
        for n in SIZES:
            # Pareto with x_min = 1: x = U^(-1 / (alpha - 1)).
            out.append((f"pareto alpha={alpha} n={n}", rng.random(n) ** (-1.0 / (alpha - 1.0)), alpha))
    return out


def _median_time(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def measure(repeats: int) -> list[dict[str, Any]]:
    import powerlaw

    from reference_impl.heavy_tail import fit_power_law

    def reference(x: np.ndarray) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return powerlaw.Fit(x, discrete=False, verbose=0)

    rows = []
    for name, x, known in data_sets():
        ours_t, ours = _median_time(lambda x=x: fit_power_law(x), repeats)  # type: ignore[misc]
        ref_t, ref = _median_time(lambda x=x: reference(x), repeats)  # type: ignore[misc]
        row: dict[str, Any] = {
            "set": name, "n": int(x.size), "ours_s": ours_t, "powerlaw_s": ref_t, "speedup": ref_t / ours_t,
            "ours_status": ours.status, "powerlaw_noise_flag": bool(ref.noise_flag),
            "x_min_agrees": bool(ours.x_min == ref.xmin) if ours.exponent is not None else None,
            "exponent_diff": abs(ours.exponent - ref.alpha) if ours.exponent is not None else None,
        }
        if known is not None:
            row["ours_error"] = abs(ours.exponent - known) if ours.exponent is not None else None
            row["powerlaw_error"] = abs(float(ref.alpha) - known)
        rows.append(row)
        print(f"  {name:48s} ours {ours_t * 1e3:8.2f} ms  powerlaw {ref_t * 1e3:9.2f} ms  x{row['speedup']:.0f}",
              file=sys.stderr, flush=True)
    return rows


def markdown(rows: list[dict[str, Any]], repeats: int) -> str:
    speedups = [r["speedup"] for r in rows]
    agree = [r for r in rows if r["x_min_agrees"] is not None]
    lines = [
        "# Heavy-tail fit: this project's `csn-mle` against `powerlaw` 2.0",
        "",
        f"Command: `HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_heavy_tail.py --repeats {repeats}` "
        "(one process, one thread, the two fits interleaved per set, median of the repeats).",
        "",
        f"- speed-up over powerlaw: median {statistics.median(speedups):.0f}x, range "
        f"{min(speedups):.0f}x-{max(speedups):.0f}x over {len(rows)} sets",
        f"- x_min agrees on {sum(bool(r['x_min_agrees']) for r in agree)} of {len(agree)} sets with a fit; largest "
        f"exponent difference {max((r['exponent_diff'] for r in agree), default=0.0):.1e}",
        "",
        "| set | n | ours ms | powerlaw ms | speed-up | x_min agrees | exponent diff | error ours | error powerlaw |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        diff = "-" if r["exponent_diff"] is None else f"{r['exponent_diff']:.1e}"
        errs = [("-" if r.get(k) is None else f"{r[k]:.3f}") for k in ("ours_error", "powerlaw_error")]
        lines.append(f"| {r['set']} | {r['n']} | {r['ours_s'] * 1e3:.2f} | {r['powerlaw_s'] * 1e3:.1f} | "
                     f"{r['speedup']:.0f}x | {r['x_min_agrees']} | {diff} | {errs[0]} | {errs[1]} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "heavy_tail"))
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    rows = measure(args.repeats)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"repeats": args.repeats, "rows": rows}, indent=1) + "\n")
    text = markdown(rows, args.repeats)
    out.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
