"""Whole-batch loading (a transform's `batch_loader`) gives exactly the batches of the per-row
path, for every source that has one: synthetic pools, Fashion-MNIST's arrays, raw pixels."""

from __future__ import annotations

import numpy as np
import pytest
from tensorflow_datasets.proto import tf_example_pb2

from alexnet_jax.data import fashion_mnist, imagenet, pipeline, prepare, raw, synthetic

try:  # tests/ on sys.path (pytest's default for a folder without __init__.py)
  import imagenet_fixtures as fx
except ImportError:  # tests/ as a package
  from tests import imagenet_fixtures as fx


class PerRow:
  """The transform without its batch form: the pipeline loads one example at a time."""

  def __init__(self, transform):
    self.transform = transform
    self.uniforms_per_example = pipeline.uniforms_per_example(transform)

  def __call__(self, record, u):
    return self.transform(record, u)


def _stack(examples: list[dict]) -> dict:
  return {key: np.stack([np.asarray(e[key]) for e in examples]) for key in examples[0]}


def reference_train(source, transform, *, seed, global_batch_size, batch_index, rows):
  """The rows of a training batch, written out: stream position -> epoch permutation ->
  transform(record, the row's uniforms), stacked."""
  n, count = len(source), pipeline.uniforms_per_example(transform)
  uniforms = (np.random.default_rng([seed, batch_index]).random((global_batch_size, count))
              if count else None)
  examples = []
  for row in range(global_batch_size)[rows]:
    epoch, offset = divmod(batch_index * global_batch_size + row, n)
    index = int(np.random.default_rng([seed, epoch]).permutation(n)[offset])
    examples.append(transform(source[index], None if uniforms is None else uniforms[row]))
  return _stack(examples)


def reference_eval(source, transform, *, global_batch_size, batch_index, rows):
  """The rows of an eval batch: past the end, the previous row again, masked out."""
  n = len(source)
  examples, mask = [], []
  for i, row in enumerate(range(global_batch_size)[rows]):
    position = batch_index * global_batch_size + row
    if position >= n and i > 0:
      examples.append(examples[-1])
    else:
      examples.append(transform(source[position % n], None))
    mask.append(position < n)
  return {**_stack(examples), "mask": np.array(mask)}


def assert_same(got: dict, want: dict) -> None:
  for key, value in want.items():
    assert got[key].dtype == value.dtype, key
    np.testing.assert_array_equal(got[key], value, err_msg=key)


def check_source(source, train_transform, eval_transform, *, seed=5, global_batch_size=8,
                 num_batches=None):
  """Every training batch over two epochs and more and every eval batch, for 1 and 2
  processes, against the written-out reference and against the library's per-row path."""
  assert pipeline.batch_loader(source, train_transform) is not None
  assert pipeline.batch_loader(source, eval_transform) is not None
  n = len(source)
  num_batches = num_batches or (2 * n) // global_batch_size + 2  # epochs straddled
  for count in (1, 2):
    for index in range(count):
      rows = pipeline._rows_of_process(global_batch_size, index, count)
      kwargs = dict(seed=seed, global_batch_size=global_batch_size, process_index=index,
                    process_count=count)
      whole = pipeline.train_dataset(source, train_transform, **kwargs)
      per_row = pipeline.train_dataset(source, PerRow(train_transform), **kwargs)
      for k in range(num_batches):
        got = whole[k]
        assert int(got["skipped"]) == 0 and list(got["skipped_notes"]) == []
        want = reference_train(source, train_transform, seed=seed,
                               global_batch_size=global_batch_size, batch_index=k, rows=rows)
        assert_same(got, want)
        assert_same(got, per_row[k])
      kwargs = dict(global_batch_size=global_batch_size, process_index=index,
                    process_count=count)
      whole = pipeline.eval_dataset(source, eval_transform, **kwargs)
      per_row = pipeline.eval_dataset(source, PerRow(eval_transform), **kwargs)
      for k in range(len(whole)):
        want = reference_eval(source, eval_transform, global_batch_size=global_batch_size,
                              batch_index=k, rows=rows)
        assert_same(whole[k], want)
        assert_same(whole[k], per_row[k])


def test_synthetic_batches_equal_the_per_row_reference():
  # 13 examples from a pool of 5: batches straddle epochs, the last eval batch is padded and
  # with 2 processes the second one's rows are all past the end.
  source = synthetic.SyntheticSource(13, (6, 5, 3), 10, seed=1, pool_size=5)
  check_source(source, synthetic.Identity(), synthetic.Identity())
  # The config's own split (what the trainer opens), at a batch of its size.
  from alexnet_jax import config_base, data as data_lib
  config = config_base.base_config()
  config.data.source, config.model.image_size = "synthetic", 35
  config.data.num_train_examples, config.data.synthetic_pool_size = 40, 16
  split = data_lib.open_split(config, "train")
  check_source(split.source, split.transform, split.transform, global_batch_size=24,
               num_batches=5)


@pytest.mark.parametrize("channels", [1, 3])
def test_fashion_mnist_batches_equal_the_per_row_reference(channels):
  rng = np.random.default_rng(0)
  source = fashion_mnist.ArraySource(rng.integers(0, 256, (11, 28, 28, 1), dtype=np.uint8),
                                     rng.integers(0, 10, 11).astype(np.int32))
  transform = fashion_mnist.to_rgb_if_needed(channels)
  check_source(source, transform, transform)
  assert pipeline.train_dataset(source, transform, seed=0, global_batch_size=4)[0][
      "image"].shape == (4, 28, 28, channels)


@pytest.fixture(scope="module")
def raw_source(tmp_path_factory):
  """The train split of a raw build of 12 images in shards of 5 (records read across shards)."""
  tmp = tmp_path_factory.mktemp("raw")
  folder = fx.make_folder_dataset(tmp / "folder")
  out = tmp / "raw"
  prepare.write_tfds_dataset(prepare.plan_folder(str(folder), 5), str(out),
                             prepare.StoreOptions(format="raw"), progress=False)
  source = imagenet.tfds_split(str(out), "train")
  assert isinstance(source, raw.RawSource) and len(source) == 12
  return source


@pytest.mark.parametrize("size", [32, 227])
def test_raw_batches_equal_the_per_row_reference(raw_source, size):
  check_source(raw_source, raw.RawPaperTrainTransform(size), raw.RawCentreCropTransform(size),
               global_batch_size=10, num_batches=4)
  tens = raw.RawTenCropTransform(size)
  for k in range(2):
    assert_same(pipeline.eval_dataset(raw_source, tens, global_batch_size=10)[k],
                reference_eval(raw_source, tens, global_batch_size=10, batch_index=k,
                               rows=slice(0, 10)))


def test_raw_records_are_read_in_place_as_the_proto_parse_reads_them(raw_source):
  for index in range(len(raw_source)):
    data = raw_source.inner.serialized(index)
    start, stop, label = raw.example_image_and_label(data)
    record = raw_source[index]
    assert data[start:stop] == record["image"] and label == record["label"]
    image, label = raw_source.image_and_label(index)
    np.testing.assert_array_equal(image, raw.pixels(record))
    assert label == record["label"] and not image.flags.writeable


def _example(features: dict) -> tf_example_pb2.Example:
  example = tf_example_pb2.Example()
  for key, (kind, values) in features.items():
    getattr(example.features.feature[key], kind).value.extend(values)
  return example


@pytest.mark.parametrize("features", [
    {"image": ("bytes_list", [b"\x01" * 300]), "label": ("int64_list", [7]),
     "file_name": ("bytes_list", [b"a.JPEG"])},
    {"file_name": ("bytes_list", [b"a"]), "label": ("int64_list", [-3, 4]),
     "image": ("bytes_list", [b"xy", b"z"]), "other": ("float_list", [1.5])},
    {"image": ("bytes_list", [b""]), "label": ("int64_list", [2 ** 40]),
     "file_name": ("bytes_list", [b"b"])},
])
def test_the_wire_parse_agrees_with_the_proto_on_every_layout_it_accepts(features):
  data = _example(features).SerializeToString()
  start, stop, label = raw.example_image_and_label(data)
  assert data[start:stop] == features["image"][1][0] and label == features["label"][1][0]


@pytest.mark.parametrize("data", [
    _example({"image": ("bytes_list", [b"x"]), "label": ("int64_list", [1])}),  # no file_name
    _example({"image": ("bytes_list", []), "label": ("int64_list", [1]),
              "file_name": ("bytes_list", [b"a"])}),  # an empty image list
    _example({"image": ("int64_list", [1]), "label": ("int64_list", [1]),
              "file_name": ("bytes_list", [b"a"])}),  # an image of the wrong kind
    b"", b"\x0a\x05abc", b"\xff\x01",  # not an Example
])
def test_the_wire_parse_leaves_everything_else_to_the_full_parse(data):
  if not isinstance(data, bytes):
    data = data.SerializeToString()
  assert raw.example_image_and_label(data) is None
  # An Example of its two fields written twice is merged by the proto parse: not plain either.
  plain = _example({"image": ("bytes_list", [b"x"]), "label": ("int64_list", [1]),
                    "file_name": ("bytes_list", [b"a"])}).SerializeToString()
  assert raw.example_image_and_label(plain + plain) is None


def test_paper_offsets_of_rows_equal_paper_offsets_row_by_row():
  from alexnet_jax.data import crops
  u = np.random.default_rng(0).random((500, 2))
  u[:4] = [[0.0, 0.999999999999], [0.5, 0.25], [1 - 2 ** -53, 0.0], [0.1, 0.9]]
  for square, crop in ((256, 224), (256, 227), (256, 256), (40, 16)):
    dx, dy = crops.paper_offsets_of_rows(u, square, crop)
    assert [(int(a), int(b)) for a, b in zip(dx, dy)] == [
        crops.paper_offsets(row, square, crop) for row in u]


def test_a_kept_batch_is_never_written_again_and_a_dropped_one_is_reused():
  source = synthetic.SyntheticSource(4096, (64, 64, 3), 10, seed=0, pool_size=64)
  dataset = pipeline.train_dataset(source, synthetic.Identity(), seed=0, global_batch_size=32)
  kept = [dataset[k] for k in range(3)]
  copies = [{key: np.array(value) for key, value in batch.items()} for batch in kept]
  view = kept[0]["image"][5:7]  # a view alone keeps its array
  addresses = {batch["image"].ctypes.data for batch in kept}
  del kept[0]
  for k in range(3, 9):
    batch = dataset[k]
    assert batch["image"].ctypes.data not in addresses  # never a batch still held
    del batch  # dropped: its array is free for the next
  for batch, copy in zip(kept, copies[1:]):
    assert_same(batch, copy)
  np.testing.assert_array_equal(view, copies[0]["image"][5:7])
  first = dataset[9]["image"].ctypes.data
  assert dataset[10]["image"].ctypes.data == first  # reused once nothing holds it


def test_an_unreadable_record_in_a_whole_batch_is_counted_by_the_per_row_path():
  bad = 3

  class Records:
    def __len__(self):
      return 10

    def __getitem__(self, i):
      if i == bad:
        raise pipeline.SkippableRecordError(f"record {i} is corrupt")
      return i

  class Numbers:
    def __call__(self, record, u):
      return {"image": np.full((2,), record, np.int64), "label": np.int32(record)}

    def batch_loader(self, source):
      def load(indices, uniforms, empty):
        images, labels = empty("image", (2,), np.int64), empty("label", (), np.int32)
        for row, index in enumerate(indices.tolist()):
          labels[row] = source[index]
          images[row] = index
      return load

  train = pipeline.train_dataset(Records(), Numbers(), seed=0, global_batch_size=5)
  batches = [train[k] for k in range(2)]  # one epoch
  assert sum(int(b["skipped"]) for b in batches) == 1
  assert [n.split(":")[0] for b in batches for n in b["skipped_notes"]] == [str(bad)]
  assert bad not in np.concatenate([b["label"] for b in batches])
  evaluation = list(pipeline.eval_dataset(Records(), Numbers(), global_batch_size=4))
  assert sum(int(b["skipped"]) for b in evaluation) == 1
  assert sum(int(b["mask"].sum()) for b in evaluation) == 9
