#!/usr/bin/env python3
"""Control-plane benchmark: API latency with a long history, and what scraping /metrics costs.

1. API latency. A pipeline runs 20 batches for real; then its queue is grown to 100,000 done
   batches (with a batch run each) by copying those rows in SQL, as a long-running pipeline's
   store would look. `sluice serve` answers `GET /api/v1/status` (every pipeline's queue,
   workers, deployments), `GET /api/v1/pipelines/p/batches?limit=100` (the first page) and a
   page deep in the queue (`after=` the id 90% deep), 300 times each over one keep-alive
   connection: p50 and p99 printed, on the young store (20 batches) and on the grown one.
2. /metrics cost. One scrape's CPU on the 100,000-batch store (100 scrapes of an idle
   server). Then `sluice serve --workers 2` drains 300 files of 2,000 rows, three times with
   nothing scraping it and three times with /metrics read every second, alternating; the
   process's CPU seconds (utime + stime from /proc) per batch, medians, and the ratio (target
   under 1% more).
   CPU time, not wall time: on 2 cores wall time is too noisy for a 1% difference.

Figures are printed, never asserted. Usage: `python3 bench/api.py [SLUICE_BINARY]` (default:
`$CARGO_TARGET_DIR/release/sluice`, else `.../debug/sluice`).
"""

import http.client
import json
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BATCHES = 100_000


def binary() -> str:
    if len(sys.argv) > 1:
        return sys.argv[1]
    target = Path(os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache/sluice-target"))
    for profile in ("release", "debug"):
        b = target / profile / "sluice"
        if b.exists():
            return str(b)
    sys.exit("no sluice binary: cargo build --release (or pass its path)")


def spec(files: str, max_rows: int) -> str:
    return (
        "pipeline: p\nsource:\n  files: " + files + "\n"
        "  columns: {id: int64, amount: float64}\n  settle: 0s\n"
        f"batch:\n  max_rows: {max_rows}\n  max_files: 1\n"
        "transform: SELECT id, amount * 2 AS doubled FROM input\n"
        "sink:\n  delta: out\n"
    )


def land(folder: Path, files: int, rows: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    n = 0
    for f in range(files):
        with open(folder / f"part_{f:05}.csv", "w") as out:
            out.write("id,amount\n")
            for _ in range(rows):
                out.write(f"{n},{n % 97}.5\n")
                n += 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(sluice: str, cwd: Path, store: str, port: int, workers: int = 0) -> subprocess.Popen:
    args = [sluice, "serve", "--store", store, "--listen", f"127.0.0.1:{port}", "--public-read"]
    if workers:
        args += ["--workers", str(workers)]
    p = subprocess.Popen(args, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", "/health")
            if c.getresponse().status == 200:
                return p
        except OSError:
            time.sleep(0.1)
    p.kill()
    sys.exit("sluice serve did not come up")


def grow(db: Path) -> None:
    """Copies the pipeline's done tasks and their runs until the queue holds BATCHES."""
    con = sqlite3.connect(db)
    have = con.execute("SELECT count(*) FROM tasks").fetchone()[0]
    cols = [r[1] for r in con.execute("PRAGMA table_info(tasks)") if r[1] != "seq"]
    run_cols = [r[1] for r in con.execute("PRAGMA table_info(batch_runs)") if r[1] != "id"]
    copies = (BATCHES - have + have - 1) // have
    with con:
        for c in range(1, copies + 1):
            sel = ", ".join(
                f"batch_id || '~{c}'" if k == "batch_id" else f"path || '~{c}'" if k == "path" else k
                for k in cols
            )
            con.execute(f"INSERT INTO tasks ({', '.join(cols)}) SELECT {sel} FROM tasks WHERE batch_id NOT LIKE '%~%'")
            sel = ", ".join(f"batch_id || '~{c}'" if k == "batch_id" else k for k in run_cols)
            con.execute(
                f"INSERT INTO batch_runs ({', '.join(run_cols)}) SELECT {sel} FROM batch_runs WHERE batch_id NOT LIKE '%~%'"
            )
    con.execute(
        f"DELETE FROM tasks WHERE seq IN (SELECT seq FROM tasks ORDER BY seq DESC LIMIT (SELECT max(0, count(*) - {BATCHES}) FROM tasks))"
    )
    con.commit()
    con.close()


def latencies(port: int, path: str, n: int = 300) -> tuple[float, float]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    out = []
    for _ in range(n):
        t = time.perf_counter()
        c.request("GET", path)
        r = c.getresponse()
        r.read()
        assert r.status == 200, (path, r.status)
        out.append((time.perf_counter() - t) * 1000)
    out.sort()
    return statistics.median(out), out[int(len(out) * 0.99) - 1]


def get(port: int, path: str):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("GET", path)
    r = c.getresponse()
    return json.loads(r.read())


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def drain(sluice: str, scrape: bool) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        # Register the pipeline on an empty folder (`run` exits at once), then let `serve
        # --workers 2` find the files as they land.
        (d / "landing").mkdir()
        (d / "p.yaml").write_text(spec("landing/*.csv", 2_000))
        store = str(d / "state.db")
        subprocess.run(
            [sluice, "run", "p.yaml", "--store", store, "--until-drained"],
            cwd=d,
            check=True,
            capture_output=True,
        )
        port = free_port()
        proc = serve(sluice, d, store, port, workers=2)
        stop = threading.Event()

        def scraper():
            while not stop.wait(1.0):
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                c.request("GET", "/metrics")
                c.getresponse().read()

        t = threading.Thread(target=scraper)
        if scrape:
            t.start()
        start = cpu_seconds(proc.pid)
        land(d / "landing", 300, 2_000)
        deadline = time.time() + 1800
        done = 0
        while time.time() < deadline:
            s = [x for x in get(port, "/api/v1/status")["pipelines"] if x["pipeline"] == "p"]
            if s and s[0]["pending"] + s[0]["leased"] == 0 and s[0]["done"] >= 300:
                done = s[0]["done"]
                break
            time.sleep(0.5)
        cpu = cpu_seconds(proc.pid) - start
        stop.set()
        if scrape:
            t.join()
        proc.terminate()
        proc.wait()
        return cpu, done


def api_figures(sluice: str, d: Path, store: str, label: str) -> None:
    """Status and batch-page latencies, and what one /metrics scrape costs, on `store`."""
    port = free_port()
    proc = serve(sluice, d, store, port)
    try:
        print(f"-- {label}")
        page = get(port, "/api/v1/pipelines/p/batches?limit=100")
        count = sqlite3.connect(store).execute("SELECT count(*) FROM tasks").fetchone()[0]
        deep = sqlite3.connect(store).execute(
            "SELECT seq FROM tasks ORDER BY seq LIMIT 1 OFFSET ?", (count * 9 // 10,)
        ).fetchone()[0]
        assert len(page["batches"]) == min(100, count), page.keys()
        for name, path in [
            ("status", "/api/v1/status"),
            ("batches, first page", "/api/v1/pipelines/p/batches?limit=100"),
            ("batches, page at 90%", f"/api/v1/pipelines/p/batches?limit=100&after={deep}"),
        ]:
            p50, p99 = latencies(port, path)
            print(f"{name:<26} p50 {p50:7.2f} ms  p99 {p99:7.2f} ms")
        # What one scrape costs the serving process, on this store, with nothing else
        # running in it.
        before = cpu_seconds(proc.pid)
        p50, p99 = latencies(port, "/metrics", n=100)
        per_scrape = (cpu_seconds(proc.pid) - before) / 100
        print(f"{'/metrics':<26} p50 {p50:7.2f} ms  p99 {p99:7.2f} ms, {per_scrape * 1000:.1f} CPU ms a scrape")
    finally:
        proc.terminate()
        proc.wait()


def main() -> None:
    sluice = binary()
    print(f"binary: {sluice}")
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        land(d / "landing", 20, 10)
        (d / "p.yaml").write_text(spec("landing/*.csv", 10))
        store = str(d / "state.db")
        subprocess.run(
            [sluice, "run", "p.yaml", "--store", store, "--until-drained"],
            cwd=d,
            check=True,
            capture_output=True,
        )
        # The same figures on the young store (20 batches) and after growing it: flat means
        # the reads cost what is live, not the history.
        api_figures(sluice, d, store, "20 batches")
        t = time.time()
        grow(Path(store))
        print(f"store grown to {BATCHES} batches in {time.time() - t:.1f} s")
        api_figures(sluice, d, store, f"{BATCHES:,} batches")
    # Alternating, three runs each: the medians.
    runs = {False: [], True: []}
    for _ in range(3):
        for scrape in (False, True):
            cpu, n = drain(sluice, scrape)
            runs[scrape].append(cpu / max(n, 1))
    a, b = statistics.median(runs[False]), statistics.median(runs[True])
    each = lambda xs: ", ".join(f"{x * 1000:.1f}" for x in xs)
    print(f"drain of 300 batches without scraping: {a * 1000:.1f} CPU ms a batch (runs: {each(runs[False])})")
    print(f"drain with /metrics every 1 s: {b * 1000:.1f} CPU ms a batch (runs: {each(runs[True])})")
    print(f"scraping costs {100 * (b - a) / a:+.2f}% CPU a batch (target under 1%)")


if __name__ == "__main__":
    main()
