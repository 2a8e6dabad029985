"""Reading a build of more shards than `ulimit -n` allows open files (data/records.py): every
record reads, with a bounded number of shards open; at the limit, one sentence."""

from __future__ import annotations

import json
import subprocess
import sys

from array_record.python import array_record_module
from tensorflow_datasets.proto import tf_example_pb2

from tests.imagenet_fixtures import REPO

NUM_SHARDS = 150
PER_SHARD = 2


def _example(number: int) -> bytes:
  example = tf_example_pb2.Example()
  feature = example.features.feature
  feature["image"].bytes_list.value.append(number.to_bytes(4, "little") * 8)
  feature["label"].int64_list.value.append(number % 1000)
  feature["file_name"].bytes_list.value.append(f"n{number:08d}.JPEG".encode())
  return example.SerializeToString()


def _shards(tmp_path) -> list[str]:
  paths = []
  for shard in range(NUM_SHARDS):
    path = str(tmp_path / f"imagenet2012-train.array_record-{shard:05d}-of-{NUM_SHARDS:05d}")
    writer = array_record_module.ArrayRecordWriter(path, "group_size:1,uncompressed")
    for k in range(PER_SHARD):
      writer.write(_example(shard * PER_SHARD + k))
    writer.close()
    paths.append(path)
  return paths


# Runs in a subprocess whose soft and hard limits are 64 open files (fewer than the shards):
# four threads read every record, in a shuffled order, while the open files are counted.
READ_ALL = """
import json, os, resource, sys, threading
import numpy as np
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
from alexnet_jax.data import records
paths = json.loads(sys.argv[1])
examples = records.ExampleRecords(tuple(paths), (PER_SHARD,) * len(paths))
order = np.random.default_rng(0).permutation(len(examples))
seen, most_open = {}, [0]
def read(part):
  for i in part:
    record = examples[int(i)]
    seen[int(i)] = (int.from_bytes(record["image"][:4], "little"), record["label"],
                    record["file_name"].decode())
    most_open[0] = max(most_open[0], len(os.listdir("/proc/self/fd")))
threads = [threading.Thread(target=read, args=(part,)) for part in np.array_split(order, 4)]
for t in threads: t.start()
for t in threads: t.join()
result = {"capacity": records.shard_capacity(), "most_open": most_open[0],
          "ok": all(seen[i] == (i, i % 1000, f"n{i:08d}.JPEG") for i in range(len(examples))),
          "count": len(seen)}
# At the limit itself (other files took every descriptor), one sentence naming ulimit -n.
records._open_shards._close_idle(0)
hoard = []
try:
  while True:
    hoard.append(open(os.devnull))
except OSError:
  pass
try:
  examples[0]
except records.TooManyOpenFilesError as e:
  result["error"] = str(e)
print(json.dumps(result))
""".replace("PER_SHARD", str(PER_SHARD))


def test_more_shards_than_the_open_file_limit_all_read(tmp_path):
  paths = _shards(tmp_path)
  result = subprocess.run([sys.executable, "-c", READ_ALL, json.dumps(paths)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-3000:]
  out = json.loads(result.stdout.strip().splitlines()[-1])
  assert out["ok"] and out["count"] == NUM_SHARDS * PER_SHARD
  assert out["capacity"] == 32  # half of the 64
  assert out["most_open"] < 64
  # Told once, with the cost and the remedy.
  assert result.stderr.count("150 shards, 32 kept open at once (half of `ulimit -n` 64)") == 1
  assert out["error"].startswith(f"too many open files to open {paths[0]}: this process may "
                                 "have 64 open (`ulimit -n`)")
  assert "ulimit -n 4096" in out["error"]


def test_a_low_soft_limit_is_raised_toward_the_hard_one():
  script = ("import resource; resource.setrlimit(resource.RLIMIT_NOFILE, (64, 8192)); "
            "from alexnet_jax.data import records; "
            "print(records.shard_capacity(), resource.getrlimit(resource.RLIMIT_NOFILE)[0])")
  result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                          text=True, timeout=60, check=True)
  assert result.stdout.split() == ["2048", "4096"]
