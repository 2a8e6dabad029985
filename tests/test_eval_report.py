"""eval_report: the counts and their summary by hand; --mode=eval's file; 10-crop on ImageNet."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from alexnet_jax import report as eval_report, evaluate, experiment, models
from alexnet_jax.checkpoint import layout
from alexnet_jax.data import fashion_mnist

try:  # tests/ on sys.path (pytest's default): the same module, so one shared run per session
  import test_predict as shared
  import imagenet_fixtures as fx
except ImportError:
  from tests import imagenet_fixtures as fx, test_predict as shared


def test_counts_and_summary_by_hand():
  counts = eval_report.ViewCounts.zeros(3)
  labels = np.array([0, 0, 0, 1, 1, 2])
  ranked = np.array([[0, 1], [1, 0], [1, 2], [1, 0], [0, 1], [0, 1]])  # top-2 here
  counts.add(labels, ranked)
  np.testing.assert_array_equal(counts.confusion, [[1, 2, 0], [1, 1, 0], [1, 0, 0]])
  np.testing.assert_array_equal(counts.top5_hits, [2, 2, 0])
  view = eval_report.summarize(counts, ("cat", "dog"), num_confusions=2)
  assert view["num_examples"] == 6
  assert view["top1"] == pytest.approx(2 / 6) and view["top5"] == pytest.approx(4 / 6)
  assert [c["top1"] for c in view["per_class"]] == [pytest.approx(1 / 3), 0.5, 0.0]
  assert view["per_class"][2]["name"] == "class 2"  # no name given: a placeholder
  assert view["most_confused"][0] == {
      "true": 0, "true_name": "cat", "predicted": 1, "predicted_name": "dog", "count": 2,
      "fraction_of_true": pytest.approx(2 / 3)}
  assert len(view["most_confused"]) == 2


@pytest.fixture(scope="module")
def report(tmp_path_factory):
  workdir, config = shared.shared_run(tmp_path_factory)
  result = evaluate.evaluate_checkpoint(experiment.build(config, "eval"), workdir)
  return result, json.loads((workdir / layout.LATEST_EVAL_REPORT_FILE).read_text())


def test_mode_eval_writes_the_report(report):
  metrics, written = report
  assert metrics["eval_report"].endswith("eval_report_2.json")
  assert written["step"] == 2 and written["data_source"] == "fashion_mnist"
  center = written["views"]["center_crop"]
  assert center["num_examples"] == metrics["eval/num_examples"] == 40
  assert center["top1"] == pytest.approx(metrics["eval/top1"], abs=1e-9)
  assert center["top5"] == pytest.approx(metrics["eval/top5"], abs=1e-9)
  assert [c["name"] for c in center["per_class"]] == list(fashion_mnist.CLASS_NAMES)
  assert sum(c["count"] for c in center["per_class"]) == 40
  for pair in center["most_confused"]:
    assert pair["true"] != pair["predicted"]
    assert pair["true_name"] == fashion_mnist.CLASS_NAMES[pair["true"]]
  counts = [pair["count"] for pair in center["most_confused"]]
  assert counts == sorted(counts, reverse=True)


def test_ten_crop_is_not_applicable_to_fashion_mnist(report):
  written = report[1]
  assert written["views"]["ten_crop"] is None
  assert any("ten_crop: not applicable" in note for note in written["notes"])


def test_imagenet_gets_centre_and_ten_crop_views(tmp_path):
  data_dir = fx.make_folder_dataset(tmp_path / "imagenet", val_layout="class", num_val=5)
  config = fx.imagenet_config(str(data_dir), image_size=65, resize_size=72, batch_size=8)
  config.model.variant, config.model.init = "d2l", "xavier"
  exp = experiment.build(config, "eval")
  params = models.init("d2l", 0, image_size=65, in_channels=3, num_classes=1000)
  params = jax.device_put(params, exp.state_shardings["params"])
  counted = {view: eval_report.ViewCounts.zeros(1000) for view in (False, True)}
  centre_metrics = evaluate.run_eval(exp, params, ten_crop=False, view_counts=counted[False])
  ten_metrics = evaluate.run_eval(exp, params, ten_crop=True, view_counts=counted[True])
  written = eval_report.build_report(config, exp.info, 0, counted)
  center, ten = written["views"]["center_crop"], written["views"]["ten_crop"]
  assert center["num_examples"] == ten["num_examples"] == 5
  assert written["notes"] == []
  centre_counts = [c["count"] for c in center["per_class"]]
  assert len(centre_counts) == 1000 and sum(centre_counts) == 5
  assert center["per_class"][207]["name"] == "golden retriever"
  # The ten-crop view really reads 10 views per image, and both views agree with the trainer's
  # own metrics of the same pass.
  assert next(exp.eval_batches(ten_crop=True))["image"].shape == (8, 10, 65, 65, 3)
  assert center["top5"] == pytest.approx(centre_metrics["eval/top5"], abs=1e-9)
  assert ten["top5"] == pytest.approx(ten_metrics["eval/top5"], abs=1e-9)


def test_reports_are_named_by_step_and_the_latest_is_copied(tmp_path):
  info = fashion_mnist_info()
  counts = {False: eval_report.ViewCounts.zeros(10)}
  cfg = _tiny_config()
  later = eval_report.write_report(cfg, info, tmp_path, 500, counts)
  earlier = eval_report.write_report(cfg, info, tmp_path, 400, counts)
  assert later.name == "eval_report_500.json" and earlier.name == "eval_report_400.json"
  latest = json.loads((tmp_path / layout.LATEST_EVAL_REPORT_FILE).read_text())
  assert latest["step"] == 500  # evaluating an older step does not replace the latest report


def fashion_mnist_info():
  from alexnet_jax.data import DataInfo
  return DataInfo(num_classes=10, channels=1, class_names=fashion_mnist.CLASS_NAMES)


def _tiny_config():
  from alexnet_jax import config_base
  config = config_base.base_config()
  config.data.source = "fashion_mnist"
  return config
