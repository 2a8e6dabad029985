"""`python -m alexnet_jax.tools.prepare` stopped by Ctrl-C and run again, and on a full disk, as a
user meets them: the command in a subprocess, a real SIGINT, a real full filesystem."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import psutil
import pytest

from alexnet_jax.data import imagenet, prepare, records
from alexnet_jax.data.prepare import storage
from tests import imagenet_fixtures as fx

ENV = {**os.environ, "PYTHONPATH": str(fx.REPO)}
# The prepare command with every image slowed to 50 ms, so a run of 28 small shards lasts a
# few seconds and is caught in the middle. Spawned workers import this script as __mp_main__,
# so they run the patch too.
SLOW_PREPARE = """
import time
from alexnet_jax.data.prepare import storage
from alexnet_jax.tools import prepare
_stored_image = storage.stored_image
def slow_stored_image(*args, **kwargs):
  time.sleep(0.05)
  return _stored_image(*args, **kwargs)
storage.stored_image = slow_stored_image
if __name__ == "__main__":
  prepare.run()
"""


def _dataset(tmp_path):
  """48 train + 8 validation images: 28 shards of 2."""
  return fx.make_folder_dataset(tmp_path / "folder", per_class=12, num_val=8)


def _flags(folder, out, *extra):
  return [f"--folder_dir={folder}", f"--data_dir={out}", "--examples_per_shard=2",
          "--num_workers=2", *extra]


def _wait_for(path, pattern, proc, timeout=90.0):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if re.search(pattern, path.read_text()):
      return
    assert proc.poll() is None, path.read_text()[-3000:]
    time.sleep(0.05)
  raise AssertionError(f"no {pattern!r} in:\n{path.read_text()[-3000:]}")


def _records_of(data_dir):
  """Every record of both splits (parsed: a tf.train.Example's map of features serializes in
  an order that differs from process to process), in order; the shard lengths; the prepare
  info; the build's file names."""
  version_dir = imagenet.prepared_tfds_versions(str(data_dir))[-1]
  root = data_dir / imagenet.TFDS_NAME / version_dir
  out = {}
  for split in ("train", "validation"):
    examples = records.open_split(str(root), split)
    out[split] = (examples.shard_lengths, [examples[i] for i in range(len(examples))])
  info = json.loads((root / imagenet.PREPARE_INFO_FILE).read_text())
  info.pop("date")
  info.pop("origin")
  return out, info, sorted(p.name for p in root.iterdir())


def _uninterrupted(folder, out, options):
  prepare.write_tfds_dataset(prepare.plan_folder(str(folder), 2), str(out), options,
                             progress=False)
  return _records_of(out)


def test_ctrl_c_stops_within_seconds_and_a_rerun_resumes(tmp_path):
  folder = _dataset(tmp_path)
  out = tmp_path / "out"
  script = tmp_path / "slow_prepare.py"
  script.write_text(SLOW_PREPARE)
  log = tmp_path / "first.log"
  flags = _flags(folder, out, "--resize_shorter=24")
  with open(log, "w") as stderr:
    # Its own process group, which gets the SIGINT, as a terminal's Ctrl-C does.
    proc = subprocess.Popen([sys.executable, str(script), *flags], stderr=stderr,
                            stdout=subprocess.DEVNULL, cwd=fx.REPO, env=ENV,
                            start_new_session=True)
  try:
    _wait_for(log, r"shard [3-9]/28 done", proc)
    children = psutil.Process(proc.pid).children(recursive=True)
    assert len(children) >= 2  # the two workers (and multiprocessing's resource tracker)
    started = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    status = proc.wait(timeout=30)
    stopped_in = time.monotonic() - started
  finally:
    if proc.poll() is None:
      proc.kill()
  text = log.read_text()
  assert status == 130, text[-3000:]
  assert stopped_in < 5, stopped_in
  _, alive = psutil.wait_procs(children, timeout=2)
  assert not alive, alive
  assert "Traceback" not in text
  last = text.strip().splitlines()[-1]
  finished = int(re.fullmatch(r"prepare stopped by SIGINT: (\d+) of 28 shards are finished in "
                              r".*5\.1\.0\.incomplete-alexnet_jax; run the same command again "
                              r"to resume from them\.", last)[1])
  assert 3 <= finished < 28
  assert imagenet.prepared_tfds_versions(str(out)) == []

  again = subprocess.run([sys.executable, "-m", "alexnet_jax.tools.prepare", *flags],
                         capture_output=True, text=True, cwd=fx.REPO, env=ENV, timeout=120)
  assert again.returncode == 0, again.stderr[-3000:]
  reused = int(re.search(r"resuming the unfinished build in \S+: (\d+) of 28 shards reused",
                         again.stderr)[1])
  # Shards a worker finished while the stop was under way count too.
  assert finished <= reused < 28
  assert len(re.findall(r"shard \d+/28 done", again.stderr)) == 28 - reused
  assert _records_of(out) == _uninterrupted(folder, tmp_path / "straight",
                                            prepare.StoreOptions(resize_shorter=24,
                                                                 decoder="auto"))


def _interrupt_at(monkeypatch, image_number):
  """stored_image sends this process a SIGINT at its `image_number`-th image."""
  calls = []
  original = storage.stored_image

  def interrupting(*args, **kwargs):
    calls.append(1)
    if len(calls) == image_number:
      os.kill(os.getpid(), signal.SIGINT)
    return original(*args, **kwargs)

  monkeypatch.setattr(storage, "stored_image", interrupting)


def test_resume_checks_each_shard_and_other_options_start_over(tmp_path, monkeypatch, caplog):
  folder = _dataset(tmp_path)
  out = tmp_path / "out"
  shards = prepare.plan_folder(str(folder), 2)
  options = prepare.StoreOptions(resize_shorter=24)
  caplog.set_level("INFO")
  _interrupt_at(monkeypatch, 13)  # in the 7th shard (in this process: no workers)
  with pytest.raises(prepare.Interrupted, match=r"SIGINT: 6 of 28 shards are finished"):
    prepare.write_tfds_dataset(shards, str(out), options, progress=False)
  monkeypatch.undo()
  work_dir = out / "imagenet2012" / "5.1.0.incomplete-alexnet_jax"
  # Only whole shards and their records are left (the 7th was cut short and removed).
  assert len(list(work_dir.glob("*.done.json"))) == 6
  assert len(list(work_dir.glob("*.array_record"))) == 6

  # A damaged shard and one without its record are written again; the 4 others are kept.
  with open(work_dir / "train-00001.array_record", "ab") as f:
    f.write(b"x")
  (work_dir / "train-00002.done.json").unlink()
  prepare.write_tfds_dataset(shards, str(out), options, progress=False)
  assert "4 of 28 shards reused" in caplog.text
  assert _records_of(out) == _uninterrupted(folder, tmp_path / "straight", options)

  # An unfinished build of other options is not mixed in: it starts over, saying why.
  other = tmp_path / "other"
  _interrupt_at(monkeypatch, 5)
  with pytest.raises(prepare.Interrupted):
    prepare.write_tfds_dataset(shards, str(other), options, progress=False)
  monkeypatch.undo()
  caplog.clear()
  prepare.write_tfds_dataset(shards, str(other), prepare.StoreOptions(resize_shorter=24,
                                                                      jpeg_quality=80),
                             progress=False)
  assert re.search(r"starting over: the unfinished build in \S+ is not this command's \(it "
                   r"was started with other options: jpeg_quality=90 \(now 80\)\)", caplog.text)
  assert "reused" not in caplog.text


@pytest.fixture
def small_filesystem(tmp_path):
  """A 2 MB tmpfs at tmp_path/full (needs the right to mount: root in this project's VMs)."""
  mount_point = tmp_path / "full"
  mount_point.mkdir()
  mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)],
                           capture_output=True, text=True)
  if mounted.returncode != 0:
    pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
  try:
    yield mount_point
  finally:
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_a_full_disk_is_one_sentence(tmp_path, small_filesystem):
  folder = _dataset(tmp_path)
  # raw: 196,608 bytes an image, 0.4 MB a shard: the 2 MB fill after a few shards.
  command = [sys.executable, "-m", "alexnet_jax.tools.prepare",
             *_flags(folder, small_filesystem / "data", "--format=raw")]
  proc = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                          cwd=fx.REPO, env=ENV)
  children = []
  try:
    while proc.poll() is None and not children:  # the workers, to check that they end
      children = psutil.Process(proc.pid).children(recursive=True)
      time.sleep(0.05)
    _, stderr = proc.communicate(timeout=120)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 1, stderr[-3000:]
  assert "Traceback" not in stderr
  errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1 and errors[0] == stderr.strip().splitlines()[-1]
  assert re.fullmatch(
      r"error: no space left on the device of \S+5\.1\.0\.incomplete-alexnet_jax: the \d+ "
      r"shards left need about [\d.]+ MB more \(estimated from the \d+ finished, [\d.]+ MB\) "
      r"and [\d.]+ (MB|GB) is free; free space there \(the finished shards are kept\) and run "
      r"the same command again to resume, or choose another --data_dir\.", errors[0])
  _, alive = psutil.wait_procs(children, timeout=2)
  assert not alive
  # What is left: finished shards with their records; the cut-short ones were removed.
  work_dir = small_filesystem / "data" / "imagenet2012" / "5.1.0.incomplete-alexnet_jax"
  shard_files = sorted(p.stem for p in work_dir.glob("*.array_record"))
  assert shard_files and shard_files == sorted(
      p.name[:-len(".done.json")] for p in work_dir.glob("*.done.json"))
