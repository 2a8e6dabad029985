#!/usr/bin/env bash
# Train on every worker of a Cloud TPU VM pod slice (v4-32, v5p-64, ...): the same command
# must run on all hosts at once; JAX detects the slice and joins the workers itself.
# UNTESTED: never run on a TPU slice (none was available); launch/slurm.sbatch and
# launch/local.sh are the tested launchers (README "Scaling out").
#
#   launch/tpu_vm.sh TPU_NAME ZONE --config=configs/imagenet.py --workdir=gs://BUCKET/runs/alexnet \
#       --config.data.data_dir=gs://BUCKET/tfds
#
# Assumes the repository is cloned at ~/alexnet_jax on every worker and installed with
# `pip install -e ~/alexnet_jax "jax[tpu]"` (run SETUP=1 once to do that on all workers).
# The workdir and data must be reachable by all workers (a GCS bucket, or a shared disk).
set -euo pipefail

if [[ $# -lt 3 ]]; then
  echo "usage: $0 TPU_NAME ZONE --config=... --workdir=... [--config.field=value ...]" >&2
  exit 2
fi
tpu_name=$1
zone=$2
shift 2

ssh_all() {
  gcloud compute tpus tpu-vm ssh "$tpu_name" --zone="$zone" --worker=all --command="$1"
}

if [[ "${SETUP:-0}" == "1" ]]; then
  ssh_all "cd ~/alexnet_jax && git pull --ff-only && pip install -e . 'jax[tpu]'"
fi

# Quote every argument for the remote shell.
args=$(printf ' %q' "$@")
ssh_all "cd ~/alexnet_jax && python -m alexnet_jax.main${args}"
