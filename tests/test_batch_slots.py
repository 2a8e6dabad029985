"""Reusable shared-memory batch slots (data/batch_slots.py): reuse, copies, cleanup, and real
Grain workers whose device batches stay intact while their slots are written again."""

from __future__ import annotations

import os
import sys
import time

import jax
import numpy as np
import pytest

from alexnet_jax import sharding
from alexnet_jax.data import batch_slots, device, pipeline

SHM_DIR = "/dev/shm"
on_linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/dev/shm")


def test_a_released_slot_is_reused_and_a_held_one_is_not():
  worker, trainer = batch_slots.WorkerSlots(), batch_slots.TrainerSlots()
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
  worker, trainer = batch_slots.WorkerSlots(), batch_slots.TrainerSlots()
  _, handle = worker.array((1024,), np.uint8)
  assert os.path.exists(os.path.join(SHM_DIR, handle.name.lstrip("/")))
  trainer.copied({"image": handle})
  assert not os.path.exists(os.path.join(SHM_DIR, handle.name.lstrip("/")))
  trainer.close()


class Numbers:
  def __len__(self):
    return 40

  def __getitem__(self, i):
    return i


class Pictures:
  """A 96x96x3 image (27 KB; 8 of them make a batch large enough for a slot) that encodes its
  record and the example's uniform."""
  uniforms_per_example = 1

  def __call__(self, record, u):
    image = np.full((96, 96, 3), record, np.uint8)
    image[0, 0, 0] = int(u[0] * 250)
    return {"image": image, "label": np.int32(record)}


def _device_batches(num_workers: int, count: int) -> list[dict]:
  dataset = pipeline.train_dataset(Numbers(), Pictures(), seed=0, global_batch_size=8)
  mesh = sharding.make_mesh(jax.devices()[:1])
  batches = device.DeviceBatches(dataset, mesh, batch_size=8, num_workers=num_workers,
                                 host_prefetch=2, device_prefetch=2)
  kept = [next(batches) for _ in range(count)]  # all alive while the slots are reused
  batches.close()
  return kept


@on_linux
def test_worker_batches_stay_intact_while_their_slots_are_reused():
  before = set(os.listdir(SHM_DIR))
  reference = _device_batches(num_workers=0, count=12)
  from_workers = _device_batches(num_workers=2, count=12)
  for want, got in zip(reference, from_workers):
    np.testing.assert_array_equal(np.asarray(got["image"]), np.asarray(want["image"]))
    np.testing.assert_array_equal(np.asarray(got["label"]), np.asarray(want["label"]))
  deadline = time.time() + 10  # the workers' segments go with them
  while set(os.listdir(SHM_DIR)) - before and time.time() < deadline:
    time.sleep(0.1)
  assert not set(os.listdir(SHM_DIR)) - before
