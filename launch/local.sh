#!/usr/bin/env bash
# Runs a sweep (or a single run) on this machine; NUM_PROCESSES>1 starts that many local JAX
# processes that train together through jax.distributed on localhost (the multi-host code path).
#
#   launch/local.sh configs/quickstart.py runs/quickstart [--config.KEY=VALUE ...]
#   NUM_PROCESSES=2 launch/local.sh configs/smoke.py runs/smoke2
#
# Environment: NUM_PROCESSES (1), COORDINATOR_PORT (free port from 12355), PYTHON (python),
# DRY_RUN=1 prints the command lines instead of running them. Logs of processes 1.. go to
# WORKDIR/logs/process-<i>.log; process 0 prints to this terminal. See launch/README.md.
set -euo pipefail

if [[ $# -lt 2 ]]; then
  echo "usage: $0 CONFIG WORKDIR [extra ehr_jax.main flags...]" >&2
  exit 2
fi
config=$1 workdir=$2
shift 2
num_processes=${NUM_PROCESSES:-1}
python=${PYTHON:-python}
cmd=("$python" -m ehr_jax.main "--config=$config" "--workdir=$workdir" "$@")

if ! [[ $num_processes =~ ^[1-9][0-9]*$ ]]; then
  echo "NUM_PROCESSES must be a positive integer; got '$num_processes'" >&2
  exit 2
fi

if [[ $num_processes -eq 1 ]]; then
  if [[ ${DRY_RUN:-0} == 1 ]]; then
    printf '%q ' "${cmd[@]}"; echo
    exit 0
  fi
  exec "${cmd[@]}"
fi

port=${COORDINATOR_PORT:-$((12355 + RANDOM % 1000))}
export JAX_COORDINATOR_ADDRESS="localhost:$port" JAX_NUM_PROCESSES=$num_processes
if [[ ${DRY_RUN:-0} == 1 ]]; then
  for ((i = 0; i < num_processes; i++)); do
    printf 'JAX_COORDINATOR_ADDRESS=%s JAX_NUM_PROCESSES=%s JAX_PROCESS_ID=%s ' \
      "$JAX_COORDINATOR_ADDRESS" "$num_processes" "$i"
    printf '%q ' "${cmd[@]}"; echo
  done
  exit 0
fi

mkdir -p "$workdir/logs"
pids=()
# Stop every process we started if one is interrupted; a lone survivor would wait forever.
trap 'kill "${pids[@]}" 2>/dev/null || true' INT TERM
for ((i = num_processes - 1; i >= 0; i--)); do
  if [[ $i -eq 0 ]]; then
    JAX_PROCESS_ID=0 "${cmd[@]}" &
  else
    JAX_PROCESS_ID=$i "${cmd[@]}" >"$workdir/logs/process-$i.log" 2>&1 &
  fi
  pids+=($!)
done
status=0
for ((n = 0; n < num_processes; n++)); do
  code=0
  wait -n || code=$?
  if [[ $code -ne 0 && $status -eq 0 ]]; then
    status=$code  # one process failed: the others would block in collectives, stop them
    kill "${pids[@]}" 2>/dev/null || true
  fi
done
exit "$status"
