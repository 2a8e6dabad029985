#!/usr/bin/env bash
# Start NUM_PROCESSES processes of `python -m alexnet_jax.main ARGS...` on this host, joined
# into one JAX job (CPU devices, gloo collectives, coordinator on 127.0.0.1 at a free port).
# Output lines are prefixed with the process index; exits non-zero if any process fails.
#
#   launch/local.sh 2 --config=configs/synthetic.py --workdir=/tmp/run
#   DEVICES_PER_PROCESS=2 launch/local.sh 2 --config=... --workdir=...   # 2 x 2 CPU devices
set -uo pipefail

if [[ $# -lt 1 || ! "$1" =~ ^[0-9]+$ ]]; then
  echo "usage: $0 NUM_PROCESSES ARGS..." >&2
  exit 2
fi
num_processes=$1
shift
devices=${DEVICES_PER_PROCESS:-1}
python=${PYTHON:-python}
port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

pids=()
trap 'kill -TERM "${pids[@]}" 2>/dev/null' TERM INT  # each process checkpoints, then exits

for ((i = 0; i < num_processes; i++)); do
  (
    export JAX_PLATFORMS=cpu
    export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=${devices}"
    "$python" -m alexnet_jax.main "$@" --coordinator_address="127.0.0.1:${port}" \
      --num_processes="${num_processes}" --process_id="${i}" \
      > >(sed -u "s/^/[${i}] /") 2>&1 &
    child=$!
    trap 'kill -TERM "$child" 2>/dev/null' TERM  # forwarded to the Python process
    wait "$child"; code=$?
    while kill -0 "$child" 2>/dev/null; do wait "$child"; code=$?; done  # woken by the trap
    exit "$code"
  ) &
  pids+=($!)
done

status=0
for pid in "${pids[@]}"; do
  wait "$pid" || status=$?
done
exit "$status"
