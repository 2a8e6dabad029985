"""Read-only numpy arrays that Grain's worker processes map from the trainer instead of each
unpickling a copy: a folder index (data/imagenet.py's `FolderSource`) of ImageNet's 1.28M
file names is 43 MB, and every worker held it twice (docs/data.md, "Loader memory").

Grain starts its workers with `spawn` and sends each one the pickled dataset, which the worker
keeps for its life next to what it unpickled. A `SharedArrays` pickles as a handle instead:
the arrays live in one anonymous memory file (`memfd_create`, named `alexnet_jax_index` in
/proc/PID/maps) that the creating process writes once and keeps open; a process that
unpickles the handle opens the same file through `/proc/<creator PID>/fd/<fd>` (its device
and inode checked) and maps it read-only, so every process shares the same pages.

The file has no name in any file system: nothing is left in /tmp or /dev/shm whatever way the
trainer ends (a normal exit, Ctrl-C, kill -9). Its memory goes when the last process that has
it open or mapped ends (the workers exit with the trainer: data/loading.py).

Where there is no memfd_create or no /proc (not Linux), or the file cannot be reopened through
/proc, the arrays are plain arrays and pickle as before: a copy per worker.
"""

from __future__ import annotations

import logging
import mmap
import os
import weakref
from typing import Iterator, Mapping

import numpy as np

# The memory file's name: shown in /proc/PID/maps ("/memfd:alexnet_jax_index (deleted)").
MEMFD_NAME = "alexnet_jax_index"
_ALIGN = 64

# (name, dtype str, shape, byte offset) of each array in the file.
Layout = tuple[tuple[str, str, tuple[int, ...], int], ...]


def _layout(arrays: Mapping[str, np.ndarray]) -> tuple[Layout, int]:
  entries, offset = [], 0
  for name, array in arrays.items():
    offset = -(-offset // _ALIGN) * _ALIGN
    entries.append((name, array.dtype.str, tuple(array.shape), offset))
    offset += array.nbytes
  return tuple(entries), max(offset, 1)  # mmap refuses an empty file


def _read_only(array: np.ndarray) -> np.ndarray:
  array.flags.writeable = False
  return array


def _views(buffer, layout: Layout) -> dict[str, np.ndarray]:
  return {name: _read_only(np.ndarray(shape, np.dtype(dtype), buffer=buffer, offset=offset))
          for name, dtype, shape, offset in layout}


def _proc_path(pid: int, fd: int) -> str:
  return f"/proc/{pid}/fd/{fd}"


def _file_id(fd: int) -> tuple[int, int]:
  stat = os.fstat(fd)
  return stat.st_dev, stat.st_ino


class SharedArrays(Mapping[str, np.ndarray]):
  """Named read-only arrays (a copy of `arrays`, C order) in one shared memory file; pickles
  as a handle that maps the same pages in the process that unpickles it (while the process
  that pickled it is alive). `shared`: False where that is not possible (then it pickles the
  arrays)."""

  def __init__(self, arrays: Mapping[str, np.ndarray]):
    arrays = {name: np.ascontiguousarray(array) for name, array in arrays.items()}
    self._handle: tuple[int, int, tuple[int, int]] | None = None  # (pid, fd, file id)
    self._layout, size = _layout(arrays)
    fd = _new_memory_file(size)
    if fd is None:
      self._arrays = {name: _read_only(np.array(array)) for name, array in arrays.items()}
      return
    # Written through a shared mapping that this process keeps: its pages are mapped here too,
    # so a worker's mapping of them is shared memory, not the worker's own.
    mapped = mmap.mmap(fd, size)
    for name, dtype, shape, offset in self._layout:
      np.ndarray(shape, np.dtype(dtype), buffer=mapped, offset=offset)[...] = arrays[name]
    self._arrays = _views(mapped, self._layout)
    self._own(fd)

  def _own(self, fd: int) -> None:
    self._handle = (os.getpid(), fd, _file_id(fd))
    weakref.finalize(self, os.close, fd)

  @classmethod
  def _attach(cls, pid: int, fd: int, file_id: tuple[int, int], layout: Layout,
              size: int) -> "SharedArrays":
    path = _proc_path(pid, fd)
    try:
      own = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
      raise RuntimeError(
          f"The shared index of process {pid} cannot be opened ({path}: {e.strerror or e}): "
          "that process has ended, or this one may not read its files.") from e
    if _file_id(own) != tuple(file_id):
      os.close(own)
      raise RuntimeError(f"{path} is no longer the shared index of process {pid}.")
    self = cls.__new__(cls)
    self._layout = layout
    self._arrays = _views(mmap.mmap(own, size, access=mmap.ACCESS_READ), layout)
    self._own(own)
    return self

  @classmethod
  def _unshared(cls, arrays: dict[str, np.ndarray]) -> "SharedArrays":
    self = cls.__new__(cls)
    self._handle, self._layout = None, _layout(arrays)[0]
    self._arrays = {name: _read_only(array) for name, array in arrays.items()}
    return self

  @property
  def shared(self) -> bool:
    """Whether pickling sends a handle to these pages (else a copy of the arrays)."""
    return self._handle is not None

  def __reduce__(self):
    if self._handle is None:
      return SharedArrays._unshared, (self._arrays,)
    pid, fd, file_id = self._handle
    size = _layout(self._arrays)[1]
    return SharedArrays._attach, (pid, fd, file_id, self._layout, size)

  def __getitem__(self, name: str) -> np.ndarray:
    return self._arrays[name]

  def __iter__(self) -> Iterator[str]:
    return iter(self._arrays)

  def __len__(self) -> int:
    return len(self._arrays)


def _new_memory_file(size: int) -> int | None:
  """An anonymous memory file of `size` bytes that this process's children can reopen through
  /proc, or None where there is none."""
  if not hasattr(os, "memfd_create"):
    return None
  try:
    fd = os.memfd_create(MEMFD_NAME, os.MFD_CLOEXEC)
  except OSError as e:
    logging.info("no memfd_create (%s): the index is pickled into each loader process", e)
    return None
  try:
    os.ftruncate(fd, size)
    reopened = os.open(_proc_path(os.getpid(), fd), os.O_RDONLY | os.O_CLOEXEC)
    try:
      same = _file_id(reopened) == _file_id(fd)
    finally:
      os.close(reopened)
    if not same:
      raise OSError("the file reopened through /proc is another one")
  except OSError as e:
    os.close(fd)
    logging.info("the index cannot be shared through /proc (%s): it is pickled into each "
                 "loader process", e)
    return None
  return fd
