"""Screenshots of a finished sweep in the MLflow UI, taken by a real headless Chromium.

    python scripts/mlflow_screenshot.py --tracking-uri sqlite:///$PWD/mlflow.db --experiment quickstart \
        --out docs/img/mlflow

starts `mlflow ui` on 127.0.0.1 for that store, waits until it answers, and saves two PNGs:
`<out>_runs.png`, the experiment's runs view (the latest sweep's parent run and its trials, with the objective
columns), and `<out>_parent.png`, the parent run's page (its description holds the frontier table; the plot
is under Artifacts, pareto/frontier.png). The server is stopped afterwards. Needs Debian's `chromium`
(`apt-get install chromium`) or Chrome on the PATH.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def browser() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    sys.exit("mlflow_screenshot: no chromium on PATH (apt-get install chromium)")


def wait_until_up(url: str, server: subprocess.Popen, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"mlflow_screenshot: mlflow ui exited with {server.returncode}")
        try:
            urllib.request.urlopen(url + "/health", timeout=2).close()
            return
        except OSError:
            time.sleep(0.5)
    sys.exit(f"mlflow_screenshot: mlflow ui did not answer at {url} within {timeout:.0f} s")


def screenshot(url: str, out: Path, width: int, height: int) -> None:
    subprocess.run([browser(), "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--disable-dev-shm-usage", f"--window-size={width},{height}", "--virtual-time-budget=25000",
                    f"--screenshot={out}", url], check=True, capture_output=True, timeout=180)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tracking-uri", required=True, help="the sweep's store, e.g. sqlite:////abs/path/mlflow.db")
    p.add_argument("--experiment", required=True, help="MLflow experiment name (its latest sweep is shown)")
    p.add_argument("--out", default="mlflow", help="PNG path prefix (default: %(default)s)")
    p.add_argument("--port", type=int, default=5055)
    p.add_argument("--size", default="2000x1000", help="browser window WIDTHxHEIGHT")
    args = p.parse_args()

    from orchestrator.tracking import find_sweep, runs_view_url

    tracker = find_sweep(args.tracking_uri, args.experiment)
    base = f"http://127.0.0.1:{args.port}"
    mlflow = Path(sys.executable).parent / "mlflow"
    server = subprocess.Popen([str(mlflow if mlflow.exists() else "mlflow"), "ui", "--backend-store-uri",
                               args.tracking_uri, "--host", "127.0.0.1", "--port", str(args.port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_up(base, server)
        width, height = (int(v) for v in args.size.split("x"))
        runs, parent = Path(f"{args.out}_runs.png"), Path(f"{args.out}_parent.png")
        runs.parent.mkdir(parents=True, exist_ok=True)
        screenshot(runs_view_url(base, tracker), runs, width, height)
        screenshot(f"{base}/#/experiments/{tracker.experiment_id}/runs/{tracker.parent_run_id}", parent,
                   width, height)
        print(f"saved {runs} and {parent}")
    finally:
        server.terminate()
        server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
