#!/usr/bin/env python3
"""Deployment benchmark: what a version switch costs the batch flow, per strategy, and how fast
a bad version is detected and rolled back.

Under steady input (a 200-row file every 250 ms) with `sluice run --workers 2`, a new version
goes out by recreate, rolling and canary in turn. From the store's batch runs:

* steady gap: the median gap between batch completions in the 10 s before the deployment;
* switch gap: the longest gap between completions from the deployment's start to 1 s after
  its end;
* ratio = switch gap / steady gap (target at most 2 for rolling and canary; recreate is
  reported for contrast: it drains on purpose).

Then a bad candidate (its SQL fails on some rows) goes out by canary with a background
analysis every `INTERVAL` seconds: detect-to-rollback is the time from the first failed batch
of the candidate to the moment every new batch is routed to stable (target within one analysis
interval plus one second), and the first-failed-measurement-to-reroute time.

Figures are printed, never asserted. Usage: `python3 bench/deploy.py [SLUICE_BINARY]`
(default: `$CARGO_TARGET_DIR/release/sluice`, else `.../debug/sluice`).
"""

import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

INTERVAL = 2  # seconds between the bad candidate's analysis measurements


def binary() -> str:
    if len(sys.argv) > 1:
        return sys.argv[1]
    target = Path(os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache/sluice-target"))
    for profile in ("release", "debug"):
        p = target / profile / "sluice"
        if p.exists():
            return str(p)
    sys.exit("no sluice binary: build one (cargo build --release) or pass its path")


def spec(version: int, transform: str, deploy: str) -> str:
    return f"""pipeline: bench
source:
  files: landing/*.csv
  columns: {{id: int64, customer: int64, amount: float64}}
  required: [id]
  settle: 0s
batch:
  max_rows: 200
  max_attempts: 1
transform: {transform}
sink:
  delta: out
  key: [id]
{deploy}"""


def plain(v: int) -> str:
    return f"SELECT id, customer, amount * 2 AS doubled, CAST({v} AS BIGINT) AS ver FROM input"


STRATEGIES = {
    "recreate": "deploy:\n  strategy: recreate\n",
    "rolling": "deploy:\n  strategy: rolling\n  max_surge: 50%\n  healthy_batches: 3\n",
    "canary": (
        "deploy:\n  strategy: canary\n  steps:\n    - set_weight: 50\n    - pause: {duration: 3s}\n"
        "    - set_weight: 100\n"
    ),
}


class Lander(threading.Thread):
    def __init__(self, landing: Path, every: float):
        super().__init__(daemon=True)
        self.landing, self.every, self.next, self.n = landing, every, 1, 0
        self.stop = threading.Event()

    def land(self, rows=200):
        tmp = self.landing / f"f{self.n:05}.csv.tmp"
        with open(tmp, "w") as f:
            f.write("id,customer,amount\n")
            for r in range(rows):
                f.write(f"{self.next},{r % 97},{r % 1000}.{r % 100:02}\n")
                self.next += 1
        tmp.rename(self.landing / f"f{self.n:05}.csv")
        self.n += 1

    def run(self):
        while not self.stop.is_set():
            self.land()
            time.sleep(self.every)


def now_ms() -> int:
    return int(time.time() * 1000)


def one(sluice: str, name: str, deploy_yaml: str, bad: bool = False) -> dict:
    d = Path(tempfile.mkdtemp(prefix=f"sluice-bench-deploy-{name}-"))
    (d / "landing").mkdir()
    (d / "v1.yaml").write_text(spec(1, plain(1), ""))
    store = str(d / "state.db")
    lander = Lander(d / "landing", 0.25)
    for _ in range(4):
        lander.land()
    run = subprocess.Popen(
        [sluice, "run", "v1.yaml", "--store", store, "--workers", "2", "--poll", "100ms"],
        cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    lander.start()
    time.sleep(10)  # steady state
    if bad:
        start_bad = lander.next + 400  # past the pre-deploy suite's dry run
        transform = (
            f"SELECT id, customer, amount * 2 AS doubled, CASE WHEN id >= {start_bad} AND id % 150 = 7 "
            "THEN CAST(concat('x', CAST(id AS VARCHAR)) AS BIGINT) ELSE CAST(2 AS BIGINT) END AS ver FROM input"
        )
    else:
        transform = plain(2)
    (d / "v2.yaml").write_text(spec(2, transform, deploy_yaml))
    t0 = now_ms()
    out = subprocess.run(
        [sluice, "deploy", "v2.yaml", "--store", store, "--wait"],
        cwd=d, capture_output=True, text=True, timeout=300,
    )
    t1 = now_ms()
    time.sleep(1.5)
    lander.stop.set()
    lander.join()
    time.sleep(3)
    run.terminate()
    run.wait(timeout=60)
    hist = json.loads(
        subprocess.run(
            [sluice, "history", "bench", "--store", store, "--json"],
            cwd=d, capture_output=True, text=True, check=True,
        ).stdout
    )[0]
    db = sqlite3.connect(store)
    done = sorted(
        f for (f,) in db.execute(
            "SELECT finished_at FROM batch_runs WHERE outcome IN ('committed', 'already_committed')"
        )
    )
    steady = [b - a for a, b in zip(done, done[1:]) if t0 - 10_000 <= a and b <= t0]
    switch = [b - a for a, b in zip(done, done[1:]) if b >= t0 and a <= t1 + 1000]
    res = {
        "strategy": name,
        "outcome": hist["deployment"]["outcome"],
        "exit": out.returncode,
        "deploy_s": (t1 - t0) / 1000,
        "steady_median_gap_ms": statistics.median(steady) if steady else None,
        "switch_max_gap_ms": max(switch) if switch else None,
        "recreate_gap_ms": hist["data"].get("gap_ms"),
    }
    if res["steady_median_gap_ms"] and res["switch_max_gap_ms"] is not None:
        res["ratio"] = res["switch_max_gap_ms"] / res["steady_median_gap_ms"]
    if bad:
        cand = hist["deployment"]["candidate_version"]
        failed = [
            f for (f,) in db.execute(
                "SELECT finished_at FROM batch_runs WHERE version = ? AND outcome IN ('failed', 'quarantined') "
                "ORDER BY finished_at", (cand,),
            )
        ]
        data = hist["data"]
        res["first_failed_batch_to_reroute_ms"] = (
            data["rerouted_at"] - failed[0] if failed and data.get("rerouted_at") else None
        )
        res["failed_measurement_to_reroute_ms"] = (
            data["rerouted_at"] - data["detected_at"] if data.get("detected_at") else None
        )
        res["target_ms"] = INTERVAL * 1000 + 1000
        res["repaired_batches"] = len((data.get("repair") or {}).get("repaired", []))
    return res


def main():
    sluice = binary()
    print(f"sluice deployment benchmark ({sluice}); a 200-row file every 250 ms, 2 workers")
    results = [one(sluice, name, yaml) for name, yaml in STRATEGIES.items()]
    bad = (
        "deploy:\n  strategy: canary\n  steps:\n    - set_weight: 50\n    - pause: {duration: 60s}\n"
        f"  analysis:\n    metrics:\n      - name: errors\n        interval: {INTERVAL}s\n"
        "        failure_condition: candidate.error_rate > 0 OR candidate.quarantine_rate > 0\n"
    )
    results.append(one(sluice, "canary-bad", bad, bad=True))
    print()
    print(f"{'strategy':<12} {'outcome':<10} {'deploy s':>8} {'steady gap':>11} {'switch gap':>11} {'ratio':>6}")
    for r in results:
        ratio = f"{r['ratio']:.2f}" if r.get("ratio") is not None else "-"
        print(
            f"{r['strategy']:<12} {r['outcome']:<10} {r['deploy_s']:>8.1f} "
            f"{r['steady_median_gap_ms'] or 0:>9.0f}ms {r['switch_max_gap_ms'] or 0:>9.0f}ms {ratio:>6}"
        )
    b = results[-1]
    print()
    print(
        f"bad candidate: first failed batch -> every new batch on stable {b['first_failed_batch_to_reroute_ms']} ms "
        f"(target <= {b['target_ms']} ms: one analysis interval + 1 s); failed measurement -> reroute "
        f"{b['failed_measurement_to_reroute_ms']} ms; {b['repaired_batches']} published batches repaired"
    )
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
