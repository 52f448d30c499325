"""The deployment files under deploy/ parse, agree with each other and with the code, and name only things
that exist: modules, subcommands, sweep files, repository paths, CLI flags, Kubernetes objects.
No cluster, no network: Ray's and MLflow's own parsers and schemas do the checking."""
from __future__ import annotations

import copy
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
IMAGE_ROOT = "/home/ray/heist/"          # where deploy/docker/Dockerfile puts the checkout
YAML_FILES = sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))
TEXT_FILES = sorted(p for p in DEPLOY.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def _load_all(path: Path) -> list:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _docs(kind: str) -> list[tuple[Path, dict]]:
    return [(p, d) for p in YAML_FILES for d in _load_all(p) if isinstance(d, dict) and d.get("kind") == kind]


def _deployment_guide() -> str:
    """The cluster deployment guide (docs/deployment.md, linked from the README)."""
    return (REPO / "docs" / "deployment.md").read_text()


def _all_text() -> list[tuple[str, str]]:
    """(name, text) of every deploy file plus the README's cluster section."""
    return [(str(p.relative_to(REPO)), p.read_text()) for p in TEXT_FILES] + [
        ("docs/deployment.md", _deployment_guide())]


def _ray_version() -> str:
    import ray

    return ray.__version__


def _mlflow_version() -> str:
    from importlib.metadata import version

    return version("mlflow")


# --- everything parses ----------------------------------------------------------------------------------

def test_deploy_files_exist():
    names = {str(p.relative_to(DEPLOY)) for p in TEXT_FILES}
    for required in ("runtime_env.yaml", "submit.sh", "kuberay/ray-cluster.gpu.yaml", "kuberay/ray-job.sweep.yaml",
                     "kuberay/shared-storage.pvc.yaml", "cluster/aws.yaml", "mlflow/mlflow.k8s.yaml",
                     "mlflow/compose.yaml", "docker/Dockerfile"):
        assert required in names, f"deploy/{required} is missing"


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_yaml_parses(path):
    docs = _load_all(path)
    assert docs, f"{path} is empty"
    assert all(isinstance(d, dict) for d in docs), f"{path}: every document should be a mapping"


def test_embedded_yaml_parses():
    for path, job in _docs("RayJob"):
        env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
        assert isinstance(env, dict), f"{path}: runtimeEnvYAML is not a mapping"


def test_submit_script_is_valid_bash():
    script = DEPLOY / "submit.sh"
    assert script.stat().st_mode & 0o111, "deploy/submit.sh should be executable"
    subprocess.run(["bash", "-n", str(script)], check=True)


# --- versions agree with what is installed ----------------------------------------------------------------

def test_ray_versions_match_the_installed_ray():
    ray_version = _ray_version()
    seen = 0
    for name, text in _all_text():
        for tag in re.findall(r"rayproject/ray(?:-ml)?:([\w.\-]+)", text):
            seen += 1
            assert tag == ray_version or tag.startswith(ray_version + "-"), \
                f"{name}: image tag rayproject/ray:{tag} does not match the installed Ray {ray_version}"
        for pinned in re.findall(r"ray\[[\w,]+\]\s*(==\s*[\w.*]+)", text):
            assert Requirement("ray" + pinned.replace(" ", "")).specifier.contains(ray_version), \
                f"{name}: ray{pinned} excludes the installed Ray {ray_version}"
    for kind in ("RayCluster", "RayJob"):
        for path, doc in _docs(kind):
            spec = doc["spec"] if kind == "RayCluster" else doc["spec"]["rayClusterSpec"]
            assert spec.get("rayVersion") == ray_version, f"{path}: rayVersion {spec.get('rayVersion')!r}"
    assert seen >= 4, "expected Ray image tags in the KubeRay, launcher and Docker files"


def test_pyproject_pins_the_same_ray():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    ray = next(Requirement(d) for d in deps if Requirement(d).name == "ray")
    assert ray.specifier.contains(_ray_version())
    assert {"default", "tune"} <= ray.extras, "the job server needs ray[default]"


def test_mlflow_server_image_matches_the_installed_client():
    version = _mlflow_version()
    tags = [t for _, text in _all_text() for t in re.findall(r"ghcr\.io/mlflow/mlflow:v([\w.\-]+)", text)]
    assert tags, "no MLflow server image found"
    assert set(tags) == {version}, f"MLflow server images {sorted(set(tags))} != installed mlflow {version}"


# --- runtime_env ------------------------------------------------------------------------------------------

def _runtime_env() -> dict:
    return yaml.safe_load((DEPLOY / "runtime_env.yaml").read_text())


def test_runtime_env_is_valid_for_ray():
    from ray.runtime_env import RuntimeEnv

    env = _runtime_env()
    RuntimeEnv(**env)                        # Ray's own validation of every field
    assert "working_dir" not in env, "working_dir comes from `--working-dir .` (deploy/submit.sh)"
    assert all(isinstance(v, str) for v in env["env_vars"].values()), "env_vars values must be strings"
    assert env["env_vars"]["RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS"] == "0"
    assert env["env_vars"]["MLFLOW_TRACKING_URI"].startswith("http"), "a cluster logs to an MLflow server"


def test_runtime_env_pip_matches_pyproject():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pip = _runtime_env()["pip"]
    packages = pip["packages"] if isinstance(pip, dict) else pip

    def norm(reqs):
        return {Requirement(r).name.lower(): (frozenset(Requirement(r).extras), Requirement(r).specifier)
                for r in reqs}

    assert norm(packages) == norm(deps), "deploy/runtime_env.yaml pip != pyproject.toml [project.dependencies]"


def test_runtime_env_upload_is_small_and_complete():
    """What `--working-dir .` with these excludes uploads (Ray's own traversal, .gitignore included)."""
    from ray._private.runtime_env.packaging import _dir_travel, _get_excludes

    files: list[Path] = []
    _dir_travel(REPO, [_get_excludes(REPO, _runtime_env()["excludes"])],
                lambda p: files.append(p) if p.is_file() else None, include_gitignore=True)
    rel = {str(p.relative_to(REPO)) for p in files}
    assert "orchestrator/__main__.py" in rel and "pyproject.toml" in rel
    assert any(r.startswith("workloads/") for r in rel)
    for bad in (".venv/", ".git/", "mlruns/", "heist_runs/", "ray_results/"):
        assert not any(r.startswith(bad) for r in rel), f"{bad} would be uploaded"
    assert not any(r.endswith((".db", ".parquet")) for r in rel)
    size = sum(p.stat().st_size for p in files)
    assert size < 10 * 2**20, f"the working dir upload is {size / 2**20:.1f} MiB"


def test_rayjob_runtime_env_matches_runtime_env_yaml():
    env_vars = _runtime_env()["env_vars"]
    for path, job in _docs("RayJob"):
        job_env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"]
        assert job_env == env_vars, f"{path}: runtimeEnvYAML env_vars differ from deploy/runtime_env.yaml"


# --- names that must exist --------------------------------------------------------------------------------

def _python_m_commands() -> list[tuple[str, str, list[str]]]:
    """(file, module, args) for every `python -m MODULE ARGS...` in deploy/ and the README section."""
    found = []
    for name, text in _all_text():
        for line in text.splitlines():
            for m in re.finditer(r"python3? -m ([\w.]+)((?: +[\w./\-\"$]+)*)", line):
                found.append((name, m.group(1), m.group(2).split()))
    return found


def test_python_modules_named_exist():
    commands = _python_m_commands()
    assert any(mod == "orchestrator" for _, mod, _ in commands)
    for name, module, _ in commands:
        if module.split(".")[0] not in ("orchestrator", "workloads"):
            continue
        rel = Path(*module.split("."))
        assert (REPO / rel / "__main__.py").exists() or (REPO / rel.with_suffix(".py")).exists(), \
            f"{name}: `python -m {module}` names no module in the repository"


def _sweep_paths() -> set[str]:
    paths = set()
    for name, module, args in _python_m_commands():
        if module == "orchestrator" and args and args[0] in ("run", "validate", "resume"):
            paths.update(a for a in args[1:] if a.endswith((".yaml", ".yml")))
    for name, text in _all_text():
        paths.update(re.findall(r"(?<![\w/])(?:/home/ray/heist/)?sweeps/[\w./\-]+\.ya?ml", text))
    return paths


def _repo_path(path: str) -> Path:
    return REPO / (path[len(IMAGE_ROOT):] if path.startswith(IMAGE_ROOT) else path)


def test_sweep_files_named_exist():
    paths = _sweep_paths()
    assert "sweeps/quickstart.yaml" in paths
    for path in paths:
        assert _repo_path(path).is_file(), f"sweep file {path} named in deploy/ or the README does not exist"


def test_orchestrator_subcommands_named_exist(kit):
    subs = {args[0] for _, mod, args in _python_m_commands() if mod == "orchestrator" and args}
    assert "run" in subs
    for sub in sorted(subs):
        r = subprocess.run([sys.executable, "-m", "orchestrator", sub, "--help"], cwd=REPO, env=kit.clean_env(),
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, f"`python -m orchestrator {sub}` is not a subcommand:\n{r.stderr[-2000:]}"


def test_sweep_files_named_validate(kit):
    for path in sorted({_repo_path(p) for p in _sweep_paths()}):
        r = subprocess.run([sys.executable, "-m", "orchestrator", "validate", str(path)], cwd=REPO,
                           env=kit.clean_env(), capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"`heist validate {path}` failed:\n{r.stdout[-1500:]}\n{r.stderr[-1500:]}"


def test_repository_paths_named_exist():
    """Every deploy/... path mentioned anywhere in deploy/ or the README section exists."""
    for name, text in _all_text():
        for path in re.findall(r"(?<![\w/.])deploy/[\w./\-]*[\w]", text):
            assert (REPO / path).exists(), f"{name} names {path}, which does not exist"


def test_dockerfile_copies_existing_paths_and_installs_the_project():
    text = (DEPLOY / "docker" / "Dockerfile").read_text()
    copies = re.findall(r"^COPY (?:--\S+ )*(.+) \S+$", text, flags=re.M)
    assert copies
    for line in copies:
        for src in line.split():
            assert (REPO / src).exists(), f"Dockerfile copies {src}, which does not exist"
    assert re.search(r"^WORKDIR /home/ray/heist$", text, flags=re.M), "the image root the RayJob names"
    assert "pip install" in text and " -e ." in text


def test_launcher_file_mounts_exist():
    config = yaml.safe_load((DEPLOY / "cluster" / "aws.yaml").read_text())
    for remote, local in config["file_mounts"].items():
        if local.startswith("~"):
            continue                       # the user's own files, e.g. ~/.ray/auth_token
        assert (REPO / local).exists(), f"aws.yaml file_mounts {remote}: {local} does not exist"


# --- CLI flags parse with the real CLIs -------------------------------------------------------------------

def _strings(node) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for v in node.values() for s in _strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return []


def _scripts(path: Path) -> list[str]:
    """The shell text of a file: every string in a YAML file (commands, args, folded blocks), else the file."""
    if path.suffix in (".yaml", ".yml"):
        return [s for doc in _load_all(path) for s in _strings(doc)]
    return [path.read_text()]


def _shell_commands(text: str, program: list[str]) -> list[list[str]]:
    """Argument lists of every `program...` command in text (line continuations joined, comments dropped;
    `${VAR:-}` and "$@" become nothing, other shell variables the placeholder X)."""
    joined = re.sub(r"\\\n\s*", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.split(" #")[0].strip()
        if line.startswith("#"):
            continue
        line = re.sub(r"\$\{\w+:-\}", "", line).replace('"$@"', "")
        line = re.sub(r"\$\$?\{\w+\}|\$\w+", "X", line)
        for part in re.split(r"&&|;|\|\||\(|\)|\|", line):
            try:
                words = shlex.split(part)
            except ValueError:
                continue
            for i in range(len(words)):
                if words[i:i + len(program)] == program:
                    out.append(words[i + len(program):])
                    break
    return out


def _mlflow_server_commands():
    found = []
    for path in TEXT_FILES:
        for args in (a for script in _scripts(path) for a in _shell_commands(script, ["mlflow", "server"])):
            args = [a for a in args if a not in (">", "2>&1", "&") and not a.startswith(("~/", ">"))]
            found.append((path, args))
    return found


def test_mlflow_server_flags_parse():
    from mlflow.cli import server

    commands = _mlflow_server_commands()
    assert {p.relative_to(DEPLOY).as_posix() for p, _ in commands} >= {
        "mlflow/mlflow.k8s.yaml", "mlflow/compose.yaml", "cluster/aws.yaml"}
    for path, args in commands:
        ctx = server.make_context("server", list(args))          # raises on an unknown or malformed flag
        assert ctx.params["artifacts_destination"], f"{path}: no --artifacts-destination (proxied artifacts)"
        assert ctx.params["backend_store_uri"], f"{path}: no --backend-store-uri"


def test_mlflow_servers_use_a_sql_backend():
    for path, args in _mlflow_server_commands():
        from mlflow.cli import server

        uri = server.make_context("server", list(args)).params["backend_store_uri"]
        if path.parent.name == "mlflow":
            assert uri.startswith("postgresql://"), f"{path}: the shared server should use PostgreSQL"
        else:
            assert uri.startswith(("postgresql://", "sqlite:////")), f"{path}: {uri}"


def test_ray_start_flags_parse():
    from ray.scripts.scripts import start

    config = yaml.safe_load((DEPLOY / "cluster" / "aws.yaml").read_text())
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        commands = [args for c in config[key] for args in _shell_commands(c, ["ray", "start"])]
        assert commands, f"aws.yaml {key}: no `ray start`"
        for args in commands:
            start.make_context("start", list(args))
        if key.startswith("head"):
            assert "--num-gpus=0" in commands[0], "the head should offer no GPUs to trials"


def test_ray_job_submit_flags_parse():
    from ray.dashboard.modules.job.cli import submit

    commands = _shell_commands((DEPLOY / "submit.sh").read_text(), ["X", "job", "submit"])   # "$ray_cli" job submit
    assert commands, "deploy/submit.sh runs no `ray job submit`"
    for args in commands:
        ctx = submit.make_context("submit", list(args))
        assert ctx.params["working_dir"] == "."
        assert ctx.params["entrypoint"][:4] == ("python", "-m", "orchestrator", "run")


def test_launcher_config_passes_rays_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((DEPLOY / "cluster" / "aws.yaml").read_text())
    validate_config(prepare_config(copy.deepcopy(config)))
    assert config["docker"]["image"].endswith("-gpu")
    workers = [t for n, t in config["available_node_types"].items() if n != config["head_node_type"]]
    assert any(t["node_config"]["InstanceType"].startswith(("g", "p")) for t in workers), "no GPU worker type"
    assert any("pip install" in c and "heist" in c for c in config["setup_commands"])


# --- Kubernetes objects -----------------------------------------------------------------------------------

def _k8s_docs() -> list[tuple[Path, dict]]:
    return [(p, d) for p in YAML_FILES for d in _load_all(p) if isinstance(d, dict) and "apiVersion" in d]


def _pod_specs(doc: dict) -> list[tuple[str, dict]]:
    kind, spec = doc["kind"], doc.get("spec", {})
    if kind in ("Deployment", "StatefulSet", "Job", "DaemonSet"):
        return [(kind, spec["template"]["spec"])]
    if kind == "RayJob":
        spec = spec["rayClusterSpec"]
    if kind in ("RayCluster", "RayJob"):
        return [("head", spec["headGroupSpec"]["template"]["spec"])] + [
            (g["groupName"], g["template"]["spec"]) for g in spec.get("workerGroupSpecs", [])]
    return []


def test_kubernetes_objects_are_well_formed():
    docs = _k8s_docs()
    kinds = {d["kind"] for _, d in docs}
    assert {"RayCluster", "RayJob", "Deployment", "Service", "PersistentVolumeClaim"} <= kinds
    for path, doc in docs:
        assert doc.get("metadata", {}).get("name"), f"{path}: a {doc['kind']} without metadata.name"
        assert "namespace" not in doc["metadata"], f"{path}: apply with -n instead of a fixed namespace"
        for group, pod in _pod_specs(doc):
            volumes = {v["name"] for v in pod.get("volumes", [])}
            for c in pod["containers"]:
                assert c.get("name") and c.get("image"), f"{path} {group}: container without name/image"
                for m in c.get("volumeMounts", []):
                    assert m["name"] in volumes, f"{path} {group}: mount {m['name']} has no volume"


def test_kubernetes_references_resolve():
    """PVC claims are defined in deploy/; Secrets are created by a documented `kubectl create secret`
    or by KubeRay (authOptions); Services select the pods of a Deployment and target their named ports."""
    docs = _k8s_docs()
    claims = {d["metadata"]["name"] for _, d in docs if d["kind"] == "PersistentVolumeClaim"}
    documented = {m for _, t in _all_text() for m in re.findall(r"kubectl create secret generic (?:-n \S+ )?([\w-]+)", t)}
    for path, doc in docs:
        for _, pod in _pod_specs(doc):
            for v in pod.get("volumes", []):
                if "persistentVolumeClaim" in v:
                    assert v["persistentVolumeClaim"]["claimName"] in claims, f"{path}: unknown claim"
            for c in pod["containers"]:
                for e in c.get("env", []):
                    ref = e.get("valueFrom", {}).get("secretKeyRef")
                    if ref:
                        assert ref["name"] in documented, f"{path}: secret {ref['name']} is never created"
    deployments = [d for _, d in docs if d["kind"] == "Deployment"]
    for path, svc in [(p, d) for p, d in docs if d["kind"] == "Service"]:
        selector = svc["spec"]["selector"]
        targets = [d for d in deployments
                   if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert len(targets) == 1, f"{path}: Service {svc['metadata']['name']} selects {len(targets)} Deployments"
        assert selector.items() <= targets[0]["spec"]["selector"]["matchLabels"].items()
        ports = {p.get("name") for c in targets[0]["spec"]["template"]["spec"]["containers"]
                 for p in c.get("ports", [])}
        for port in svc["spec"]["ports"]:
            if isinstance(port.get("targetPort"), str):
                assert port["targetPort"] in ports, f"{path}: targetPort {port['targetPort']} is not a named port"


def test_ray_clusters_have_a_cpu_head_gpu_workers_shm_and_token_auth():
    for kind in ("RayCluster", "RayJob"):
        for path, doc in _docs(kind):
            spec = doc["spec"] if kind == "RayCluster" else doc["spec"]["rayClusterSpec"]
            assert spec.get("authOptions", {}).get("mode") == "token", f"{path}: token auth"
            head = spec["headGroupSpec"]
            assert head["rayStartParams"].get("num-gpus") == "0", f"{path}: the head should offer no GPUs"
            for c in head["template"]["spec"]["containers"]:
                assert "nvidia.com/gpu" not in c.get("resources", {}).get("limits", {}), f"{path}: GPU on head"
            gpu_groups = [g for g in spec["workerGroupSpecs"]
                          if any("nvidia.com/gpu" in c.get("resources", {}).get("limits", {})
                                 for c in g["template"]["spec"]["containers"])]
            assert gpu_groups, f"{path}: no GPU worker group"
            for group, pod in _pod_specs(doc):
                shm = [v for v in pod.get("volumes", []) if v.get("emptyDir", {}).get("medium") == "Memory"]
                mounts = {m["mountPath"]: m["name"] for c in pod["containers"] for m in c.get("volumeMounts", [])}
                assert "/dev/shm" in mounts and mounts["/dev/shm"] in {v["name"] for v in shm}, \
                    f"{path} {group}: /dev/shm should be a memory emptyDir"
                assert "/mnt/heist" in mounts, f"{path} {group}: the shared victim cache is not mounted"


def test_ray_containers_point_at_the_mlflow_service_and_shared_cache():
    services = {d["metadata"]["name"] for _, d in _k8s_docs() if d["kind"] == "Service"}
    runtime_env = _runtime_env()["env_vars"]
    assert runtime_env["HEIST_CACHE"].startswith("/mnt/heist/")
    host = re.match(r"http://([\w-]+):(\d+)", runtime_env["MLFLOW_TRACKING_URI"])
    assert host and host.group(1) in services, "MLFLOW_TRACKING_URI should name the MLflow Service"
    for path, doc in _docs("RayCluster"):
        for group, pod in _pod_specs(doc):
            env = {e["name"]: e.get("value") for c in pod["containers"] for e in c.get("env", [])}
            assert env.get("MLFLOW_TRACKING_URI") == runtime_env["MLFLOW_TRACKING_URI"], f"{path} {group}"
            assert env.get("HEIST_CACHE") == runtime_env["HEIST_CACHE"], f"{path} {group}"


def test_readme_names_the_objects_the_manifests_create():
    section = _deployment_guide()
    assert section, "docs/deployment.md is empty"
    (_, cluster), = _docs("RayCluster")
    name = cluster["metadata"]["name"]
    assert f"svc/{name}-head-svc" in section, "port-forward the head service KubeRay creates (<name>-head-svc)"
    assert re.search(rf"get secret (?:-n \S+ )?{name}\b", section), "read the token from the Secret KubeRay creates"
    assert "svc/mlflow" in section
    for needle in ("helm install", "kubectl apply", "port-forward", "submit.sh", "RAY_AUTH_TOKEN", "mlflow"):
        assert needle in section, f"the README cluster section never mentions {needle!r}"


# --- deploy/submit.sh, with a stub `ray` that records what it was asked to run -----------------------------

def _run_submit(tmp_path: Path, kit, *args: str, **env: str) -> tuple[subprocess.CompletedProcess, list[str], str]:
    stub_dir = tmp_path / "bin"
    stub_dir.mkdir(exist_ok=True)
    record = tmp_path / "ray-args.txt"
    stub = stub_dir / "ray"
    stub.write_text('#!/usr/bin/env bash\n'
                    f'printf "%s\\n" "$@" > {record}\n'
                    f'echo "RAY_AUTH_MODE=${{RAY_AUTH_MODE:-}}" >> {record}\n'
                    'while [[ $# -gt 0 ]]; do if [[ $1 == --runtime-env ]]; then cat "$2"; fi; shift; done'
                    f' > {record}.env\n')
    stub.chmod(0o755)
    python = stub_dir / "python"
    if not python.exists():
        python.symlink_to(sys.executable)
    full_env = kit.clean_env(**env)
    full_env.pop("RAY_AUTH_MODE")
    full_env["PATH"] = f"{stub_dir}:{full_env['PATH']}"
    r = subprocess.run(["bash", str(DEPLOY / "submit.sh"), *args], cwd=tmp_path, env=full_env,
                       capture_output=True, text=True, timeout=60)
    lines = record.read_text().splitlines() if record.exists() else []
    runtime_env = Path(f"{record}.env").read_text() if Path(f"{record}.env").exists() else ""
    record.unlink(missing_ok=True)
    return r, lines, runtime_env


def test_submit_script_runs_ray_job_submit(tmp_path, kit):
    sweep = REPO / "tests" / "orchestrator" / "trial_digits.yaml"      # any YAML inside the checkout
    r, argv, runtime_env = _run_submit(tmp_path, kit, str(sweep), "--extra", RAY_ADDRESS="http://127.0.0.1:9")
    assert r.returncode == 0, r.stderr
    rel = str(sweep.relative_to(REPO))
    assert argv[:9] == ["job", "submit", "--address", "http://127.0.0.1:9", "--working-dir", ".",
                        "--runtime-env", "deploy/runtime_env.yaml", "--"]
    assert argv[9:16] == ["python", "-m", "orchestrator", "run", rel, "--extra", "RAY_AUTH_MODE="]
    assert yaml.safe_load(runtime_env) == _runtime_env()


def test_submit_script_token_and_tracking_overrides(tmp_path, kit):
    sweep = REPO / "tests" / "orchestrator" / "trial_digits.yaml"
    r, argv, runtime_env = _run_submit(tmp_path, kit, str(sweep), RAY_ADDRESS="http://127.0.0.1:9",
                                       RAY_AUTH_TOKEN="abc", HEIST_TRACKING_URI="http://10.1.2.3:5000",
                                       HEIST_SUBMIT_ARGS="--no-wait --submission-id s1")
    assert r.returncode == 0, r.stderr
    assert "RAY_AUTH_MODE=token" in argv, "a token without RAY_AUTH_MODE=token is never sent"
    assert argv[argv.index("--runtime-env") + 2:argv.index("--")] == ["--no-wait", "--submission-id", "s1"]
    env = yaml.safe_load(runtime_env)
    assert env["env_vars"]["MLFLOW_TRACKING_URI"] == "http://10.1.2.3:5000"
    assert env["pip"] == _runtime_env()["pip"]
    assert not list(Path(tmp_path).glob("heist-runtime-env.*")), "the temporary runtime env was not removed"


def test_submit_script_rejects_bad_input(tmp_path, kit):
    r, argv, _ = _run_submit(tmp_path, kit, str(REPO / "pyproject.toml"))
    assert r.returncode == 2 and "RAY_ADDRESS" in r.stderr and not argv
    outside = tmp_path / "elsewhere.yaml"
    outside.write_text("{}\n")
    r, argv, _ = _run_submit(tmp_path, kit, str(outside), RAY_ADDRESS="http://127.0.0.1:9")
    assert r.returncode == 2 and "outside" in r.stderr and not argv
    r, argv, _ = _run_submit(tmp_path, kit, "no/such.yaml", RAY_ADDRESS="http://127.0.0.1:9")
    assert r.returncode == 2 and "no sweep file" in r.stderr and not argv
