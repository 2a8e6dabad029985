"""configs/imagenet.py end to end on tiny ImageNets in both layouts: two train steps, exact
evaluation, corrupt files skipped and counted, --mode=eval afterwards."""

from __future__ import annotations

import json
import shutil

import pytest

from alexnet_jax.data import prepare
from tests import imagenet_fixtures as fx
from tests.helpers import eval_records, read_metrics, run_main

# A small model so the runs take seconds: torchvision's network at 64x64 (the paper variant
# only takes 224/227), 1000 classes as ImageNet has.
TINY = ("--config.model.variant=torchvision", "--config.model.init=torch",
        "--config.model.image_size=64", "--config.data.resize_size=72",
        "--config.data.num_workers=0", "--config.batch_size=4", "--config.eval_batch_size=4",
        "--config.log_every_steps=1")


def _train_and_eval(data_dir, workdir, steps, *extra):
  args = TINY + (f"--config.data.data_dir={data_dir}", f"--config.num_train_steps={steps}",
                 f"--config.eval_every_steps={steps}") + extra
  run_main("imagenet.py", workdir, *args)
  losses = [r for r in read_metrics(workdir) if "train/loss" in r]
  assert [r["step"] for r in losses] == list(range(1, steps + 1))
  final = eval_records(workdir)[-1]
  assert final["eval/num_examples"] == 3  # the 3 validation images, each once
  evaluated = run_main("imagenet.py", workdir, *args, mode="eval")
  printed = json.loads(evaluated.stdout.strip().splitlines()[-1])
  assert printed["eval/num_examples"] == 3
  assert printed["eval/loss"] == pytest.approx(final["eval/loss"], rel=1e-5)
  # The report's view of the evaluated crops is counted in that same pass: it must agree.
  report = json.loads((workdir / "eval_report.json").read_text())
  view = report["views"]["ten_crop" if "--config.data.ten_crop=True" in extra else "center_crop"]
  assert view["num_examples"] == 3
  assert view["top1"] == pytest.approx(printed["eval/top1"], abs=1e-9)
  assert view["top5"] == pytest.approx(printed["eval/top5"], abs=1e-9)
  return losses


@pytest.mark.slow  # ~20-40 s; run by .ci/run's second pytest (-m slow)
def test_folder_layout_with_corrupt_files(tmp_path):
  data = fx.make_folder_dataset(
      tmp_path / "imagenet", val_layout="class_folders",
      corrupt_train={"n01440764_0.JPEG": "truncated", "n01443537_1.JPEG": "empty"})
  # 3 steps of 4 = one epoch of the 12 training files: each bad file is drawn once, replaced
  # by its (readable) neighbour, counted, and the run goes on.
  losses = _train_and_eval(data, tmp_path / "run", 3, "--config.data.ten_crop=True")
  assert losses[-1]["data/skipped"] == 2

  # --mode=eval on a machine that holds only the validation split.
  shutil.rmtree(data / "train")
  evaluated = run_main("imagenet.py", tmp_path / "run", *TINY, f"--config.data.data_dir={data}",
                       "--config.num_train_steps=3", mode="eval")
  assert json.loads(evaluated.stdout.strip().splitlines()[-1])["eval/num_examples"] == 3
  assert (tmp_path / "run" / "eval_report_3.json").is_file()


@pytest.mark.slow  # ~20-40 s; run by .ci/run's second pytest (-m slow)
def test_tfds_arrayrecord_layout(tmp_path):
  folder = fx.make_folder_dataset(tmp_path / "folder")
  out = tmp_path / "tfds"
  prepare.write_tfds_dataset(prepare.plan_folder(str(folder), examples_per_shard=5), str(out),
                             prepare.StoreOptions())
  losses = _train_and_eval(out, tmp_path / "run", 2)
  assert losses[-1]["data/skipped"] == 0
