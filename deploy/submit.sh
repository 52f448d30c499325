#!/usr/bin/env bash
# Submit a Heist sweep to a Ray cluster as a Ray job:
#   ray job submit --working-dir . --runtime-env deploy/runtime_env.yaml -- python -m orchestrator run SWEEP
#
#   deploy/submit.sh sweeps/quickstart.yaml [extra `heist run` arguments...]
#
# Environment:
#   RAY_ADDRESS         the cluster's dashboard, e.g. http://127.0.0.1:8265 (a port-forward); required
#   RAY_AUTH_TOKEN      the cluster's token when it runs with token authentication (KubeRay authOptions,
#                       RAY_AUTH_MODE=token); or RAY_AUTH_TOKEN_PATH. Either one sets RAY_AUTH_MODE=token
#                       here; with only ~/.ray/auth_token, export RAY_AUTH_MODE=token yourself
#   HEIST_TRACKING_URI  overrides MLFLOW_TRACKING_URI of the runtime env for this job
#   HEIST_RUNTIME_ENV   runtime env YAML (default: deploy/runtime_env.yaml)
#   HEIST_SUBMIT_ARGS   extra `ray job submit` flags, e.g. "--no-wait --submission-id sweep-42"
#
# It runs from the repository root, so `--working-dir .` uploads this checkout wherever it is called from;
# the sweep file must lie inside it.
set -euo pipefail

usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; }
if [[ $# -lt 1 ]]; then
  usage >&2
  exit 2
fi
if [[ "$1" == -h || "$1" == --help ]]; then
  usage
  exit 0
fi
if [[ -z "${RAY_ADDRESS:-}" ]]; then
  echo "submit.sh: set RAY_ADDRESS to the Ray dashboard, e.g. RAY_ADDRESS=http://127.0.0.1:8265" >&2
  exit 2
fi
if [[ ! -f "$1" ]]; then
  echo "submit.sh: no sweep file $1" >&2
  exit 2
fi
root="$(cd "$(dirname "$0")/.." && pwd -P)"
sweep_abs="$(cd "$(dirname "$1")" && pwd -P)/$(basename "$1")"
sweep="${sweep_abs#"$root"/}"          # the job runs in the uploaded copy of $root: pass a relative path
if [[ "$sweep" == "$sweep_abs" ]]; then
  echo "submit.sh: $1 is outside $root; only files in the uploaded working dir reach the job" >&2
  exit 2
fi
shift
cd "$root"

if [[ -z "${RAY_AUTH_MODE:-}" && -n "${RAY_AUTH_TOKEN:-}${RAY_AUTH_TOKEN_PATH:-}" ]]; then
  export RAY_AUTH_MODE=token           # the job client sends the token only in token mode
fi

ray_cli="$(command -v ray || true)"    # else the venv's (`make install`)
if [[ -z "$ray_cli" && -x .venv/bin/ray ]]; then ray_cli=.venv/bin/ray; fi
if [[ -z "$ray_cli" ]]; then
  echo "submit.sh: no ray command: run \`make install\` or activate an environment with ray[default]" >&2
  exit 2
fi
python_cli="$(dirname "$ray_cli")/python"   # the interpreter next to ray has PyYAML (a Ray dependency)
[[ -x "$python_cli" ]] || python_cli=python3

runtime_env="${HEIST_RUNTIME_ENV:-deploy/runtime_env.yaml}"
if [[ -n "${HEIST_TRACKING_URI:-}" ]]; then
  tmp="$(mktemp "${TMPDIR:-/tmp}/heist-runtime-env.XXXXXX")"
  trap 'rm -f "$tmp"' EXIT
  "$python_cli" - "$runtime_env" "$tmp" <<'PY'
import os, sys, yaml
with open(sys.argv[1]) as f:
    env = yaml.safe_load(f) or {}
env.setdefault("env_vars", {})["MLFLOW_TRACKING_URI"] = os.environ["HEIST_TRACKING_URI"]
with open(sys.argv[2], "w") as f:
    yaml.safe_dump(env, f, sort_keys=False)
PY
  runtime_env="$tmp"
fi

# shellcheck disable=SC2086  # HEIST_SUBMIT_ARGS is a list of flags on purpose
"$ray_cli" job submit --address "$RAY_ADDRESS" \
  --working-dir . \
  --runtime-env "$runtime_env" \
  ${HEIST_SUBMIT_ARGS:-} \
  -- python -m orchestrator run "$sweep" "$@"
