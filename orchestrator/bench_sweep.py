"""`heist bench --sweep`: how much of a sweep's wall time is the trials' own work.

In one run, with the victim and the sweep's undefended reference already in the victim cache (a first sweep of
the same config fills it; it is timed apart and not counted):

* sweep: `heist run` of the sweep YAML (its own temporary storage, and an MLflow store the warm-up sweep
  created, as a user's second sweep finds it; `--trials` caps num_samples) — wall time from the call to its return (Ray start, Tune, Optuna, MLflow, every trial), and the
  peak resident memory of the driver and every process it started (summed RSS, sampled every 0.2 s: pages
  shared between processes, like torch's libraries, count once per process, so this overstates);
* plain: the same trials (each recorded defense point) in this one process with no Ray: the defense applied
  in-process, the benign pass over the test set, every attack and repeat through a `LocalQueryClient`,
  each substitute evaluated — the trials' work and nothing else. `efficiency` = plain / sweep seconds.
* with `--concurrent`: the sweep again with `search.max_concurrent: 2` on a Ray cluster whose logical CPUs
  fit two trials (the physical cores stay what they are); `speedup` = trials/hour at 2 over at 1.

Times depend on the machine's load; the table says on which machine it ran.
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
import threading
import time
from pathlib import Path


class PeakRSS:
    """Peak of the summed RSS of this process and its descendants, sampled in a thread while in the block."""

    def __init__(self, interval: float = 0.2):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()

    def _sample(self) -> int:
        import psutil

        me = psutil.Process()
        total = 0
        for p in [me, *me.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self._sample())

    def __enter__(self):
        self.peak = self._sample()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _sweep_config(path: str, folder: Path, trials: int | None, concurrent: int):
    from orchestrator.sweep_config import from_dict
    from workloads.config import load_yaml

    data = load_yaml(path) or {}
    data["storage"] = str(folder / "runs")
    data["tracking"] = (data.get("tracking") or {}) | {"uri": f"sqlite:///{folder.parent / 'mlflow.db'}"}
    data["search"] = (data.get("search") or {}) | {"max_concurrent": concurrent} | (
        {"num_samples": trials} if trials else {})
    return from_dict(data, Path(path).stem)


def timed_sweep(cfg, num_cpus: float | None = None) -> dict:
    """Run sweep `cfg` on a Ray this call starts (`num_cpus` logical CPUs, default the machine's); its wall time,
    peak RSS and the trial records."""
    import contextlib
    import io

    import ray

    from orchestrator.sweep import records, run

    with PeakRSS() as rss:
        t0 = time.perf_counter()
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False, num_cpus=num_cpus)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                code = run(cfg)
        finally:
            ray.shutdown()
        seconds = time.perf_counter() - t0
    done = [r for d in Path(cfg.storage).iterdir() if d.is_dir() for r in records(d)]
    if code != 0 or len(done) != cfg.num_samples or any(r["status"] != "FINISHED" for r in done):
        raise RuntimeError(f"bench --sweep: the sweep did not finish every trial (exit {code}, "
                           f"{len(done)} records)")
    return {"seconds": seconds, "trials": len(done), "peak_rss_mb": rss.peak / 2**20, "records": done,
            "trials_per_hour": len(done) / seconds * 3600}


def plain_trial(cfg, victim, clean) -> float:
    """The trial's work in this process with no Ray (see the module docstring); returns its seconds."""
    import torch

    from orchestrator.trial import Evaluation, _curve_recorder
    from workloads.attacks import LocalQueryClient, VictimInfo, steal
    from workloads.data import labelled_surrogate_pool
    from workloads.defenses import DefenseContext, build_defense

    t0 = time.perf_counter()
    data, model = victim.data, victim.model
    defense = build_defense(cfg.defense, DefenseContext(victim=model, dataset=data, arch=cfg.victim.arch,
                                                        seed=cfg.victim.seed, device=torch.device("cpu")))

    def answer(x):
        return defense(torch.softmax(model(x), 1), x)

    with torch.inference_mode():
        defended = torch.cat([answer(x) for x in data.x_test.split(cfg.benign.batch)]).float()
    evaluate = Evaluation(data.x_test, data.y_test, clean, defended)
    info = VictimInfo(data.shape, data.num_classes, cfg.victim.arch)
    for attack in cfg.attacks:
        for repeat in range(cfg.repeats):
            run = dataclasses.replace(attack, seed=attack.seed + repeat)
            pool, labels = labelled_surrogate_pool(run.surrogate.kind, data, name=run.surrogate.name,
                                                   size=run.surrogate.size, seed=run.seed,
                                                   data_root=cfg.victim.data_root)
            checkpoint = _curve_recorder(run.checkpoints, evaluate, [], attack.key, repeat) if run.checkpoints else None
            evaluate(steal(run, LocalQueryClient(answer, run.budget), pool, info, checkpoint, labels))
    return time.perf_counter() - t0


def run_sweep_bench(path: str = "sweeps/quickstart.yaml", trials: int | None = None, concurrency: bool = False) -> dict:
    """The sweep-efficiency figures (and with `concurrency` the max_concurrent 2 vs 1 speedup)."""
    import torch

    from orchestrator.config import trial_config
    from orchestrator.sweep_config import trial_data
    from orchestrator.trial import TrialActors

    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory(prefix="heist-bench-sweep-") as tmp:
        folder = Path(tmp)
        warm = timed_sweep(_sweep_config(path, folder / "warm", 1, 1))      # fills the victim and reference caches
        cfg = _sweep_config(path, folder / "one", trials, 1)
        sweep = timed_sweep(cfg)
        actors = TrialActors()               # only its victim cache: the victim and clean posteriors, loaded once
        base = cfg.base_trial()
        plain = 0.0
        for record in sweep["records"]:
            tcfg = trial_config(trial_data(base, {k: record[k] for k in ("defense", "hardening") if record.get(k)}))
            victim, clean = actors.victim_for(tcfg)
            plain += plain_trial(tcfg, victim, clean)
        out = {"config": path, "trials": sweep["trials"], "sweep_seconds": sweep["seconds"],
               "plain_seconds": plain, "efficiency": plain / sweep["seconds"],
               "peak_rss_mb": sweep["peak_rss_mb"], "trials_per_hour": sweep["trials_per_hour"],
               "warm_up_seconds": warm["seconds"], "cpu_cores": os.cpu_count()}
        if concurrency:
            from orchestrator.sweep_config import bundles

            per_trial = sum(b.get("CPU", 0.0) for b in bundles(cfg))
            two = timed_sweep(_sweep_config(path, folder / "two", trials, 2), num_cpus=max(os.cpu_count(), 2 * per_trial))
            out |= {"concurrent_seconds": two["seconds"], "concurrent_trials_per_hour": two["trials_per_hour"],
                    "concurrent_peak_rss_mb": two["peak_rss_mb"],
                    "speedup": two["trials_per_hour"] / sweep["trials_per_hour"]}
    return out


def format_sweep(r: dict) -> str:
    lines = [f"heist bench --sweep: {r['config']}, {r['trials']} trials, victim and undefended reference cached, "
             f"{r['cpu_cores']} CPU cores",
             f"{'sweep wall time (heist run)':<40} {r['sweep_seconds']:>9.1f} s   {r['trials_per_hour']:>7.0f} trials/h",
             f"{'same trials, one plain process':<40} {r['plain_seconds']:>9.1f} s",
             f"{'efficiency (plain / sweep)':<40} {r['efficiency']:>9.2f}",
             f"{'peak RSS, driver + Ray processes':<40} {r['peak_rss_mb']:>9.0f} MB"]
    if "speedup" in r:
        lines += [f"{'max_concurrent 2: wall time':<40} {r['concurrent_seconds']:>9.1f} s   "
                  f"{r['concurrent_trials_per_hour']:>7.0f} trials/h",
                  f"{'trials/hour, 2 vs 1 concurrent':<40} {r['speedup']:>9.2f}"]
    return "\n".join(lines)
