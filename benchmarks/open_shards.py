"""What bounding the open shard files costs (alexnet_jax/data/records.py).

  python benchmarks/open_shards.py [--num_shards=64] [--record_bytes=196608] [--rounds=3]

Writes `--num_shards` ArrayRecord shards of `--records_per_shard` records of `--record_bytes`
random bytes in a temporary folder, then reads random records (raw bytes, no parsing), the
variants alternating round by round (this VM's cores change speed over seconds):
- `array_record_data_source`: array_record's own data source (every shard stays open; what
  records.py used before);
- `records_all_open`: ExampleRecords.serialized with the cap above the shard count;
- `records_cap_N`: the same with at most N open (every read of a closed shard reopens it).
Prints one JSON line per variant and round: microseconds per record, and the fraction of
reads that had to open a shard.
"""

from __future__ import annotations

import datetime
import json
import os
import tempfile
import time

from absl import app, flags
from array_record.python import array_record_data_source, array_record_module
import numpy as np

from alexnet_jax.data import records

flags.DEFINE_integer("num_shards", 64, "Shards to write and read.")
flags.DEFINE_integer("records_per_shard", 64, "Records in each shard.")
flags.DEFINE_integer("record_bytes", 196_608, "Bytes in each record (196,608: a raw image).")
flags.DEFINE_integer("reads", 4000, "Random reads per variant and round.")
flags.DEFINE_integer("rounds", 3, "Rounds (the variants alternate within each).")
flags.DEFINE_list("caps", ["8", "32"], "Caps on open shards to time besides 'all open'.")
FLAGS = flags.FLAGS


def _write(folder: str) -> list[str]:
  data = os.urandom(FLAGS.record_bytes)
  paths = []
  for shard in range(FLAGS.num_shards):
    path = os.path.join(folder, f"shard-{shard:05d}")
    writer = array_record_module.ArrayRecordWriter(path, "group_size:1,uncompressed")
    for _ in range(FLAGS.records_per_shard):
      writer.write(data)
    writer.close()
    paths.append(path)
  return paths


def _time(read, order) -> float:
  started = time.perf_counter()
  for index in order:
    read(int(index))
  return (time.perf_counter() - started) / len(order) * 1e6


def main(argv):
  del argv
  with tempfile.TemporaryDirectory() as folder:
    paths = _write(folder)
    lengths = (FLAGS.records_per_shard,) * len(paths)
    total = sum(lengths)
    source = array_record_data_source.ArrayRecordDataSource(paths)
    examples = records.ExampleRecords(tuple(paths), lengths)
    rng = np.random.default_rng(0)
    caps = [records.MAX_OPEN_SHARDS] + [int(c) for c in FLAGS.caps]
    for round_index in range(FLAGS.rounds):
      order = rng.integers(0, total, FLAGS.reads)
      variants = [("array_record_data_source", None)] + [
          ("records_all_open" if cap >= len(paths) else f"records_cap_{cap}", cap)
          for cap in caps]
      for name, cap in variants:
        if cap is None:
          read = source.__getitem__
        else:
          records._open_shards._close_idle(0)
          records._open_shards._capacity = cap
          read = examples.serialized
        _time(read, order[:200])  # warm: open what stays open
        opens = [0]
        original = records._open_shards._open

        def counting(path, original=original):
          opens[0] += 1
          return original(path)

        records._open_shards._open = counting
        us = _time(read, order)
        records._open_shards._open = original
        print(json.dumps({
            "benchmark": "open_shards", "variant": name, "round": round_index,
            "us_per_record": round(us, 1),
            "opened_fraction": None if cap is None else round(opens[0] / len(order), 3),
            "num_shards": len(paths), "record_bytes": FLAGS.record_bytes,
            "cpu_count": os.cpu_count(), "date": datetime.date.today().isoformat()}),
            flush=True)


if __name__ == "__main__":
  app.run(main)
