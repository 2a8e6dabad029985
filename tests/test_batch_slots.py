"""Reusable shared-memory batch slots (data/batch_slots.py): reuse, copies, cleanup, and real
Grain workers whose device batches stay intact while their slots are written again."""

from __future__ import annotations

import os
import sys

import jax
import numpy as np
import pytest

from alexnet_jax import sharding
from alexnet_jax.data import batch_slots, device, pipeline

SHM_DIR = "/dev/shm"
on_linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/dev/shm")


def test_a_released_slot_is_reused_and_a_held_one_is_not():
  trainer = batch_slots.TrainerSlots()
  worker = batch_slots.WorkerSlots(trainer.prefix)
  first, handle = worker.array((4, 8), np.int32)
  first[:] = np.arange(32).reshape(4, 8)
  second, held = worker.array((4, 8), np.int32)  # the first is still in flight
  assert worker.count() == 2 and held.name != handle.name
  got = trainer.copied({"image": handle, "label": np.arange(4)})
  np.testing.assert_array_equal(got["image"], np.arange(32).reshape(4, 8))
  third, again = worker.array((4, 8), np.int32)  # released by `copied`: the same segment
  assert again.name == handle.name and worker.count() == 2
  third[:] = -1
  np.testing.assert_array_equal(got["image"], np.arange(32).reshape(4, 8))  # a copy of its own
  # `used` releases even when the consumer fails.
  with pytest.raises(RuntimeError):
    trainer.used({"image": held}, lambda b: (_ for _ in ()).throw(RuntimeError("failed")))
  assert worker.array((4, 8), np.int32)[1].name == held.name
  trainer.close()


@on_linux
def test_the_trainer_unlinks_a_segment_once_mapped():
  trainer = batch_slots.TrainerSlots()
  worker = batch_slots.WorkerSlots(trainer.prefix)
  _, handle = worker.array((1024,), np.uint8)
  assert os.path.exists(os.path.join(SHM_DIR, handle.name.lstrip("/")))
  trainer.copied({"image": handle})
  assert not os.path.exists(os.path.join(SHM_DIR, handle.name.lstrip("/")))
  # A batch loaded but never taken: removed when the trainer closes the pipeline.
  _, never_taken = worker.array((1024,), np.uint8)
  other = batch_slots.WorkerSlots(batch_slots.new_prefix())  # another pipeline's: kept
  _, others = other.array((1024,), np.uint8)
  trainer.close()
  assert not os.path.exists(os.path.join(SHM_DIR, never_taken.name))
  assert os.path.exists(os.path.join(SHM_DIR, others.name))
  batch_slots.TrainerSlots(others.name[:-len("0")]).close()
  assert not os.path.exists(os.path.join(SHM_DIR, others.name))


class Numbers:
  def __len__(self):
    return 40

  def __getitem__(self, i):
    return i


class Pictures:
  """A 96x96x3 image (27 KB; 6 or 8 of them make a batch large enough for a slot) that
  encodes its record and the example's uniform."""
  uniforms_per_example = 1

  def __call__(self, record, u):
    image = np.full((96, 96, 3), record, np.uint8)
    image[0, 0, 0] = 255 if u is None else int(u[0] * 250)  # eval transforms get None
    return {"image": image, "label": np.int32(record)}


def _device_batches(dataset, num_workers: int, count: int | None) -> list[dict]:
  mesh = sharding.make_mesh(jax.devices()[:1])
  batches = device.DeviceBatches(dataset, mesh, batch_size=8, num_workers=num_workers,
                                 host_prefetch=2, device_prefetch=2)
  # All kept alive while the workers write their slots again.
  kept = list(batches) if count is None else [next(batches) for _ in range(count)]
  batches.close()
  return kept


def _assert_same(reference, from_workers):
  assert len(reference) == len(from_workers)
  for want, got in zip(reference, from_workers):
    assert sorted(want) == sorted(got)
    for key in want:
      np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(want[key]), err_msg=key)


def _ours(names):
  """This process's segments (batch_slots.new_prefix: 'ajx' + the trainer's PID), not those
  of another run on the machine (another test suite's trainers come and go meanwhile)."""
  return {n for n in names if n.startswith(f"ajx{os.getpid()}_")}


@on_linux
def test_worker_batches_stay_intact_while_their_slots_are_reused():
  before = _ours(os.listdir(SHM_DIR))
  train = pipeline.train_dataset(Numbers(), Pictures(), seed=0, global_batch_size=8)
  _assert_same(_device_batches(train, 0, 12), _device_batches(train, 2, 12))
  # An evaluation: a finite pass, more batches than workers (each worker loads several and
  # exits when its share is done, with batches still queued), the last one padded.
  evaluation = pipeline.eval_dataset(Numbers(), Pictures(), global_batch_size=8)
  odd = pipeline.eval_dataset(Numbers(), Pictures(), global_batch_size=6)
  _assert_same(_device_batches(evaluation, 0, None), _device_batches(evaluation, 2, None))
  _assert_same(_device_batches(odd, 0, None), _device_batches(odd, 2, None))
  # Closed early with batches loaded ahead: /dev/shm is left as it was found.
  assert _ours(os.listdir(SHM_DIR)) == before
