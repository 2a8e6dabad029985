"""The folder index reaches Grain's loader processes as a handle to the trainer's shared pages,
not as pickled arrays (data/shared_arrays.py), in the same order as before, and leaves nothing
behind (docs/data.md, "Loader memory")."""

from __future__ import annotations

import gc
import os
import pickle
import subprocess
import sys
import tempfile
import threading

import cloudpickle
import numpy as np
import pytest

from alexnet_jax.data import imagenet, loading, pipeline, shared_arrays
from tests import imagenet_fixtures as fx

on_linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="memfd and /proc")
CAFE = b"n01440764/caf\xe9.JPEG"  # not UTF-8: kept as its bytes


def _source(n: int) -> imagenet.FolderSource:
  names = [b"n01440764/n01440764_%d.JPEG" % i for i in range(n - 1)] + [CAFE]
  return imagenet.FolderSource.of("/nowhere", names, [i % 1000 for i in range(n)])


def _memfds() -> int:
  """File descriptors of this process open on an index file."""
  count = 0
  for fd in os.listdir("/proc/self/fd"):
    try:
      count += shared_arrays.MEMFD_NAME in os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
      pass
  return count


@on_linux
def test_the_pickled_index_is_a_handle_whatever_its_length():
  small, large = _source(10), _source(300_000)
  assert small.index.shared and large.index.shared
  sizes = [len(pickle.dumps(s)) for s in (small, large)]
  assert max(sizes) < 4096 and abs(sizes[0] - sizes[1]) < 32, sizes
  # What Grain sends each worker: the training dataset, cloudpickled.
  dataset = pipeline.train_dataset(large, lambda record, u: record, seed=0, global_batch_size=8)
  assert len(cloudpickle.dumps(dataset[5:])) < 16_384


@on_linux
def test_a_new_process_maps_the_trainers_pages():
  source = _source(5000)
  # A fresh interpreter, as Grain's spawned workers are: it unpickles the handle, opens the
  # index through /proc and maps it read-only.
  code = (
      "import pickle, sys\n"
      "source = pickle.load(sys.stdin.buffer)\n"
      "maps = open('/proc/self/maps').read()\n"
      "print(int('alexnet_jax_index' in maps), int(source.labels.flags.writeable),\n"
      "      len(source), source.relative_path(len(source) - 1).hex(),\n"
      "      source.relative_path(1234).decode(), int(source.labels[1234]))\n")
  done = subprocess.run([sys.executable, "-c", code], input=pickle.dumps(source),
                        capture_output=True, check=True)
  mapped, writeable, n, last, name, label = done.stdout.decode().split()
  assert (mapped, writeable, int(n)) == ("1", "0", 5000)
  assert bytes.fromhex(last) == CAFE
  assert (name, int(label)) == ("n01440764/n01440764_1234.JPEG", 234)


def test_without_a_memory_file_the_arrays_are_pickled(monkeypatch):
  monkeypatch.setattr(shared_arrays, "_new_memory_file", lambda size: None)
  source = _source(1000)
  assert not source.index.shared
  copy = pickle.loads(pickle.dumps(source))
  assert len(pickle.dumps(source)) > 20_000
  assert list(copy.relative_paths) == list(source.relative_paths)
  assert copy.relative_paths[-1] == CAFE and not copy.labels.flags.writeable


def test_names_and_labels_are_kept_as_given(tmp_path):
  fx.make_folder_dataset(tmp_path, per_class=3)
  (tmp_path / "train" / "n01440764").joinpath(os.fsdecode(b"caf\xe9.JPEG")).write_bytes(
      fx.jpeg_bytes(20, 20))
  source = imagenet.folder_split(str(tmp_path), "train")
  names = list(source.relative_paths)
  assert names == sorted(names) and CAFE in names and len(names) == 13
  copy = pickle.loads(pickle.dumps(source))
  for i in range(len(source)):
    assert copy.relative_path(i) == source.relative_path(i) == names[i]
    assert copy[i]["image"] == source[i]["image"]
    assert copy[i]["label"] == source.labels[i] and isinstance(copy[i]["label"], np.int32)
  assert source[names.index(CAFE)]["file_name"] == "n01440764/caf\\xe9.JPEG"
  with pytest.raises(IndexError):
    source.relative_path(len(source))


def _old_stream_indices(seed, n, global_batch_size, batch_index, rows):
  """pipeline.stream_indices as it was before the int32 permutation (commit 6d6cf66)."""
  positions = batch_index * global_batch_size + np.arange(global_batch_size)[rows]
  epochs, offsets = np.divmod(positions, n)
  indices = np.empty_like(offsets)
  for epoch in np.unique(epochs).tolist():
    here = epochs == epoch
    indices[here] = np.random.default_rng([seed, epoch]).permutation(n)[offsets[here]]
  return indices


@pytest.mark.parametrize("n", [1, 7, 1000, 1_281_167])
def test_the_order_is_the_one_before(n):
  for seed in (0, 3):
    for epoch in (0, 1, 5):
      np.testing.assert_array_equal(pipeline.epoch_permutation(seed, n, epoch),
                                    np.random.default_rng([seed, epoch]).permutation(n))
    batch = 256
    per_epoch = max(1, n // batch)
    for batch_index in (0, 1, per_epoch - 1, per_epoch, 3 * per_epoch + 1):
      for rows in (slice(0, batch), slice(64, 128)):
        got = pipeline.stream_indices(seed, n, batch, batch_index, rows)
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, _old_stream_indices(seed, n, batch, batch_index, rows))


def test_a_workers_threads_make_an_epochs_order_once():
  pipeline._epoch_permutation.cache_clear()
  threads = [threading.Thread(target=pipeline.epoch_permutation, args=(11, 300_000, 2))
             for _ in range(4)]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  assert pipeline._epoch_permutation.cache_info().misses == 1


def _ours(folder: str) -> set[str]:
  try:
    return {name for name in os.listdir(folder) if "alexnet_jax_index" in name}
  except OSError:
    return set()


@on_linux
def test_a_normal_run_leaves_nothing_behind(tmp_path):
  fx.make_folder_dataset(tmp_path, per_class=3)
  config = fx.imagenet_config(tmp_path, batch_size=4)
  gc.collect()
  open_files = _memfds()
  split = imagenet.build(config, "train")
  assert _memfds() > open_files
  before = {folder: _ours(folder) for folder in ("/dev/shm", tempfile.gettempdir())}
  dataset = pipeline.train_dataset(split.source, split.transform, seed=0, global_batch_size=4)
  from_workers = loading.to_iterator(dataset, num_workers=1, prefetch_batches=1)
  batches = [next(from_workers) for _ in range(4)]
  from_workers.close()
  here = [dataset[i] for i in range(4)]
  for got, want in zip(batches, here):
    np.testing.assert_array_equal(got["label"], want["label"])
    np.testing.assert_array_equal(got["image"], want["image"])
  assert {folder: _ours(folder) for folder in before} == before
  del split, dataset, from_workers
  gc.collect()
  assert _memfds() == open_files  # the source's file is closed with it
