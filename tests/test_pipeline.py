"""The shared Grain pipeline: global batch order, per-process shards, exact eval, resume."""

import numpy as np
import pytest

from alexnet_jax.data import loading, pipeline
from alexnet_jax.data.fashion_mnist import REPO_COPY, load_split


class Numbers:
  """Record i is the number i."""

  def __init__(self, n):
    self.n = n

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    if not 0 <= i < self.n:
      raise IndexError(i)
    return i


class Noisy:
  """'image' is (the record, noise from the example's one uniform; -1 when given none)."""
  uniforms_per_example = 1

  def __call__(self, record, u):
    noise = -1 if u is None else int(u[0] * 1000)
    return {"image": np.array([record, noise], np.int64), "label": np.int32(record)}


noisy = Noisy()


def _take(ds, count):
  it = loading.to_iterator(ds, num_workers=0, prefetch_batches=1)
  return [next(it) for _ in range(count)]


def test_two_processes_see_exactly_the_rows_of_one():
  kwargs = dict(seed=3, global_batch_size=8)
  single = _take(pipeline.train_dataset(Numbers(21), noisy, **kwargs), 6)
  halves = [_take(pipeline.train_dataset(Numbers(21), noisy, process_index=p, process_count=2,
                                         **kwargs), 6) for p in (0, 1)]
  for step in range(6):
    joined = np.concatenate([halves[0][step]["image"], halves[1][step]["image"]])
    np.testing.assert_array_equal(joined, single[step]["image"])  # same examples, same noise


def test_each_epoch_is_a_new_permutation_of_all_examples():
  batches = _take(pipeline.train_dataset(Numbers(16), noisy, seed=0, global_batch_size=8), 4)
  epoch1 = np.concatenate([b["label"] for b in batches[:2]])
  epoch2 = np.concatenate([b["label"] for b in batches[2:]])
  assert sorted(epoch1) == sorted(epoch2) == list(range(16))
  assert not np.array_equal(epoch1, epoch2)


def test_iterator_state_resumes_at_the_same_batch():
  ds = pipeline.train_dataset(Numbers(50), noisy, seed=1, global_batch_size=4)
  it = loading.to_iterator(ds, num_workers=0, prefetch_batches=1)
  for _ in range(3):
    next(it)
  saved = it.get_state()
  expected = [next(it) for _ in range(3)]
  resumed = loading.to_iterator(ds, num_workers=0, prefetch_batches=1)
  resumed.set_state(saved)
  for want in expected:
    np.testing.assert_array_equal(next(resumed)["image"], want["image"])


@pytest.mark.parametrize("n,batch,processes", [(37, 8, 1), (37, 8, 2), (5, 16, 4), (64, 16, 2)])
def test_eval_counts_every_example_exactly_once(n, batch, processes):
  seen = []
  for p in range(processes):
    for b in pipeline.eval_dataset(Numbers(n), noisy, global_batch_size=batch,
                                   process_index=p, process_count=processes):
      assert len(b["label"]) == batch // processes  # padded to a fixed shape
      seen.extend(b["label"][b["mask"]].tolist())
  assert sorted(seen) == list(range(n))


def test_bad_records_are_replaced_and_counted():
  def fails_on_multiples_of_five(record, u):
    if record % 5 == 0:
      raise pipeline.SkippableRecordError(f"record {record} is corrupt")
    return noisy(record, u)

  batches = _take(pipeline.train_dataset(Numbers(20), fails_on_multiples_of_five, seed=0,
                                         global_batch_size=10), 4)
  assert sum(int(b["skipped"]) for b in batches) == 8  # 4 bad records per epoch, 2 epochs
  assert all(label % 5 for b in batches for label in b["label"])


def test_fashion_mnist_files_read_as_published():
  images, labels = load_split(REPO_COPY, "train")
  assert images.shape == (60000, 28, 28, 1) and images.dtype == np.uint8
  assert np.bincount(labels).tolist() == [6000] * 10
  test_images, test_labels = load_split(REPO_COPY, "test")
  assert test_images.shape == (10000, 28, 28, 1) and np.bincount(test_labels).tolist() == [1000] * 10


def test_missing_fashion_mnist_names_the_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="data.data_dir"):
    load_split(tmp_path, "train")


def test_each_bad_record_counts_once_when_its_substitute_is_bad_too():
  bad = {3, 4, 5, 11}  # 3's substitutes 4 and 5 are bad as well

  def fails(record, u):
    if record in bad:
      raise pipeline.SkippableRecordError(f"record {record} is corrupt")
    return noisy(record, u)

  batches = _take(pipeline.train_dataset(Numbers(16), fails, seed=0, global_batch_size=8), 2)
  assert sum(int(b["skipped"]) for b in batches) == len(bad)  # one epoch: each bad file once
  # The notes logged when a batch is used: one per bad file, naming it.
  notes = [note for b in batches for note in b["skipped_notes"]]
  assert sorted(int(note.split(":")[0]) for note in notes) == sorted(bad)


def test_batches_loaded_ahead_log_nothing_until_used(caplog):
  import jax

  from alexnet_jax import sharding
  from alexnet_jax.data import device

  def fails(record, u):
    if record in (3, 12):
      raise pipeline.SkippableRecordError(f"record {record} is corrupt")
    return {"image": np.full((2,), record, np.uint8), "label": np.int32(record)}

  dataset = pipeline.train_dataset(Numbers(16), fails, seed=0, global_batch_size=4)
  mesh = sharding.make_mesh(jax.devices()[:1])
  with caplog.at_level("WARNING"):
    batches = device.DeviceBatches(dataset, mesh, batch_size=4, num_workers=0,
                                   host_prefetch=2, device_prefetch=2)
    used = [np.asarray(next(batches)["label"]) for _ in range(4)]  # one epoch, more loaded
    batches.close()
  logged = [r.getMessage() for r in caplog.records if "skipping record" in r.getMessage()]
  assert batches.skipped == 2 and len(logged) == 2  # each bad file once, only when used
  assert 3 not in np.concatenate(used) and 12 not in np.concatenate(used)


def test_eval_padding_reuses_a_loaded_example_and_never_reads_again():
  reads = []

  def counting(record, u):
    reads.append(record)
    return noisy(record, u)

  batches = list(pipeline.eval_dataset(Numbers(5), counting, global_batch_size=16))
  assert sorted(reads) == list(range(5))  # 11 padding rows, no extra decode
  assert int(batches[0]["mask"].sum()) == 5 and len(batches[0]["label"]) == 16


def test_the_train_stream_resumes_by_step_alone():
  # Element k is the batch of step k: slicing at the step is the whole resume state, for any
  # worker or process count.
  ds = pipeline.train_dataset(Numbers(50), noisy, seed=1, global_batch_size=4)
  from_start = _take(ds, 7)
  resumed = _take(ds[4:], 3)
  for want, got in zip(from_start[4:], resumed):
    np.testing.assert_array_equal(got["image"], want["image"])


def test_a_started_pipeline_gives_the_same_batches_and_its_start_up_time():
  """DeviceBatches.start(): what the evaluation's pre-start uses (periodic.EvalPrestart)."""
  import jax

  from alexnet_jax import sharding
  from alexnet_jax.data import device

  mesh = sharding.make_mesh(jax.devices()[:1])

  def labels(start_first: bool) -> list[int]:
    batches = device.DeviceBatches(pipeline.eval_dataset(Numbers(10), noisy, global_batch_size=4),
                                   mesh, batch_size=4, num_workers=0, host_prefetch=1,
                                   device_prefetch=1)
    if start_first:
      batches.start()
    got = [int(l) for b in batches for l in np.asarray(b["label"])]
    assert (batches.startup_seconds is not None) == start_first
    batches.close()
    return got

  assert labels(True) == labels(False) == list(range(10)) + [9, 9]

  def broken(record, u):
    raise RuntimeError("the first batch failed")

  batches = device.DeviceBatches(pipeline.eval_dataset(Numbers(4), broken, global_batch_size=4),
                                 mesh, batch_size=4, num_workers=0, host_prefetch=1,
                                 device_prefetch=0)
  batches.start()
  with pytest.raises(RuntimeError, match="the first batch failed"):
    next(batches)  # raised in the caller's thread
  batches.close()
