#!/usr/bin/env bash
# Runs the same `ehr_jax.main` command on every worker of a Cloud TPU VM slice (big_vision's
# run_tpu.sh pattern): each worker is one JAX process; jax.distributed finds the others itself.
#
#   TPU_NAME=my-v5p-64 ZONE=us-east5-a launch/tpu_pod.sh configs/synthetic_large.py \
#       /mnt/shared/runs/synthetic_large [--config.KEY=VALUE ...]
#
# Environment: TPU_NAME and ZONE (required), PROJECT (gcloud's default when unset), REPO_DIR
# (where the repository is checked out on the workers, default ~/ehr-jax), SETUP (a command run
# on every worker first, e.g. "pip install -e ."), PYTHON (python3), GCLOUD (gcloud),
# DRY_RUN=1 prints the gcloud command instead. WORKDIR must be a directory all workers share
# (NFS/Filestore or a gcsfuse mount). See launch/README.md.
set -euo pipefail

if [[ $# -lt 2 ]]; then
  echo "usage: TPU_NAME=... ZONE=... $0 CONFIG WORKDIR [extra ehr_jax.main flags...]" >&2
  exit 2
fi
: "${TPU_NAME:?set TPU_NAME to the TPU VM name (gcloud compute tpus tpu-vm list)}"
: "${ZONE:?set ZONE to the TPU VM zone, e.g. us-east5-a}"
config=$1 workdir=$2
shift 2

main=("${PYTHON:-python3}" -m ehr_jax.main "--config=$config" "--workdir=$workdir" "$@")
remote="cd ${REPO_DIR:-~/ehr-jax}"
if [[ -n ${SETUP:-} ]]; then
  remote+=" && $SETUP"
fi
# EHR_JAX_DISTRIBUTED=auto: ehr_jax.parallel lets jax.distributed.initialize() detect the slice.
remote+=" && EHR_JAX_DISTRIBUTED=auto $(printf '%q ' "${main[@]}")"

gcloud_cmd=("${GCLOUD:-gcloud}" compute tpus tpu-vm ssh "$TPU_NAME" "--zone=$ZONE")
if [[ -n ${PROJECT:-} ]]; then
  gcloud_cmd+=("--project=$PROJECT")
fi
gcloud_cmd+=(--worker=all "--command=$remote")

if [[ ${DRY_RUN:-0} == 1 ]]; then
  printf '%q ' "${gcloud_cmd[@]}"; echo
  exit 0
fi
exec "${gcloud_cmd[@]}"
