"""alexnet_jax.inference: saliency, Grad-CAM and occlusion against hand-computed cases; AlexNet adapters."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax import inference, models

RNG = np.random.default_rng(0)


# --------------------------------------------------------------------------------------------
# Hand-computed cases on tiny models


def test_saliency_of_a_linear_model_is_its_weights():
  weights = RNG.normal(size=(6, 5, 3, 4)).astype(np.float32)  # (H, W, C, classes)
  score_fn = lambda x: jnp.einsum("nhwc,hwck->nk", x, weights)
  image = RNG.normal(size=(6, 5, 3)).astype(np.float32)
  got = np.asarray(inference.saliency(score_fn, image, 2))
  np.testing.assert_allclose(got, np.abs(weights[..., 2]).max(axis=-1), rtol=1e-6)


def test_saliency_of_a_quadratic_model():
  # score = sum(w * x^2): d score / dx = 2 w x.
  weights = RNG.normal(size=(4, 4, 2)).astype(np.float32)
  score_fn = lambda x: jnp.sum(weights * x ** 2, axis=(1, 2, 3))[:, None]
  image = RNG.normal(size=(4, 4, 2)).astype(np.float32)
  got = np.asarray(inference.saliency(score_fn, image, 0))
  np.testing.assert_allclose(got, np.abs(2 * weights * image).max(axis=-1), rtol=1e-5)


def test_grad_cam_of_global_average_pooling_is_the_class_activation_map():
  # features A = relu(x); logits = mean_hw(A) @ V. Then d score / d A_k = V[k, c] / (h w),
  # alpha_k = V[k, c] / (h w), and Grad-CAM = relu(sum_k V[k, c] A_k / (h w)) (Zhou's CAM).
  h, w, k, classes = 3, 4, 5, 3
  values = RNG.normal(size=(k, classes)).astype(np.float32)
  features_fn = lambda x: jax.nn.relu(x)
  head_fn = lambda a: jnp.mean(a, axis=(1, 2)) @ values
  image = RNG.normal(size=(h, w, k)).astype(np.float32)
  got = np.asarray(inference.grad_cam(features_fn, head_fn, image, 1))
  features = np.maximum(image, 0)
  want = np.maximum(features @ values[:, 1] / (h * w), 0)
  assert got.shape == (h, w)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_occlusion_map_shape_and_known_region():
  # Class 0's logit is the sum of the pixels of the 4x4 top-left square; class 1's is fixed.
  # A black square lowers P(class 0) exactly where it overlaps that region.
  size, patch, stride = 12, 4, 2
  image = np.full((size, size, 1), 1.0, np.float32)

  def prob_fn(batch):
    region = batch[:, :4, :4, 0].sum(axis=(1, 2)) / 16.0
    logits = jnp.stack([4 * region, jnp.full_like(region, 2.0)], axis=-1)
    return jax.nn.softmax(logits, axis=-1)

  values = inference.occlusion_map(prob_fn, image, 0, patch=patch, stride=stride, fill=0.0,
                                   batch_size=7)
  starts = inference.occlusion_starts(size, patch, stride)
  assert starts == [0, 2, 4, 6, 8]
  assert values.shape == (5, 5)
  baseline = float(prob_fn(image[None])[0, 0])
  for i, top in enumerate(starts):
    for j, left in enumerate(starts):
      overlap = max(0, 4 - top) * max(0, 4 - left)  # covered pixels of the region
      want = float(jax.nn.softmax(jnp.array([4 * (16 - overlap) / 16, 2.0]))[0])
      assert values[i, j] == pytest.approx(want, rel=1e-5), (top, left)
  assert values[0, 0] == values.min() < baseline
  assert values[4, 4] == pytest.approx(baseline)  # far from the region: no change


def test_occlusion_positions_reach_the_border_and_map_back_to_pixels():
  assert inference.occlusion_starts(10, 4, 4) == [0, 4, 6]
  with pytest.raises(ValueError, match="patch=11"):
    inference.occlusion_starts(10, 11, 1)
  values = np.array([[1.0, 3.0]])  # squares at left=0 and left=6 of a 4x10 image, patch 4
  pixels = inference.occlusion_to_pixels(values, (4, 10), patch=4, stride=6)
  np.testing.assert_allclose(pixels[0], [1, 1, 1, 1, 0, 0, 3, 3, 3, 3])


def test_conv1_filter_grid_puts_the_two_towers_side_by_side():
  kernel = RNG.normal(size=(11, 11, 3, 96)).astype(np.float32)
  grid = inference.conv1_filter_grid(kernel, towers=2, gap=1, tower_gap=4)
  # Each tower: 48 filters as 6 rows x 8 columns of 11x11 with 1-pixel gaps.
  tower_h, tower_w = 6 * 12 - 1, 8 * 12 - 1
  assert grid.shape == (tower_h, 2 * tower_w + 4, 3)
  assert grid.min() == 0.0 and grid.max() == 1.0
  # Filter 48 (the second tower's first) is scaled to its own min..max.
  first_of_second = grid[:11, tower_w + 4:tower_w + 4 + 11]
  k = kernel[..., 48]
  np.testing.assert_allclose(first_of_second, (k - k.min()) / (k.max() - k.min()), atol=1e-6)
  single = inference.conv1_filter_grid(kernel[..., :64], towers=1)
  assert single.shape == (8 * 12 - 1, 8 * 12 - 1, 3)


def test_filter_grids_are_shaped_to_fill_their_box():
  # 96 square tiles in the filters picture's panel (about 2.6:1): 6 rows of 16; one tower of
  # 48 in half of it: 6 rows of 8 (full rows preferred over a 7x7 grid of equal scale).
  assert inference.fitting_columns(96, 2.6, (11, 11), 1) == 16
  assert inference.fitting_columns(48, 1.15, (11, 11), 1) == 8
  kernel = RNG.normal(size=(11, 11, 1, 96)).astype(np.float32)
  assert inference.conv1_filter_grid(kernel, aspect=2.6).shape == (6 * 12 - 1, 16 * 12 - 1, 1)
  two = inference.conv1_filter_grid(kernel, towers=2, aspect=2.3, tower_gap=4)
  assert two.shape == (6 * 12 - 1, 2 * (8 * 12 - 1) + 4, 1)


# --------------------------------------------------------------------------------------------
# AlexNet adapters


@pytest.mark.parametrize("variant,size", [("d2l", 65), ("torchvision", 63)])
def test_alexnet_head_reproduces_the_logits(variant, size):
  cfg = {**models.model_preset(variant), "image_size": size, "num_classes": 7}
  kwargs = {k: v for k, v in cfg.items() if k != "variant"}
  params = models.init(variant, 0, **kwargs)
  probe = inference.AlexNetProbe(cfg, params, mean=(100.0,), std=(50.0,))
  images = RNG.uniform(0, 255, (2, size, size, cfg["in_channels"])).astype(np.float32)
  want = models.logits(variant, params, (images - 100.0) / 50.0, **kwargs)
  np.testing.assert_allclose(probe.logits(images), want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(probe.head(probe.conv5(images)), want, rtol=1e-4, atol=1e-5)


def test_probe_maps_have_the_expected_shapes():
  cfg = {**models.model_preset("d2l"), "image_size": 65}
  probe = inference.AlexNetProbe(cfg, models.init("d2l", 0, image_size=65), mean=(0.0,),
                                 std=(255.0,))
  image = RNG.uniform(0, 255, (65, 65, 1)).astype(np.float32)
  shapes = models.layer_shapes("d2l", image_size=65)
  assert probe.saliency(image, 3).shape == (65, 65)
  assert probe.grad_cam(image, 3).shape == shapes["conv5"][:2]
  assert probe.stage(image[None], "conv2").shape == (1, *shapes["conv2"])
  values = probe.occlusion(image, 3, patch=16, stride=16, batch_size=8)
  assert values.shape == (5, 5) and np.all((values >= 0) & (values <= 1))
  with pytest.raises(ValueError, match="layer='avgpool' is not a stage of the d2l variant"):
    probe.stage(image[None], "avgpool")
  # Activation maps: only the stages that have them are offered.
  assert probe.spatial_stages == ("conv1", "pool1", "conv2", "pool2", "conv3", "conv4",
                                  "conv5", "pool5")
  assert probe.maps(image[None], "pool2").shape == (1, *shapes["pool2"])
  for name, why in (("fc7", "has no spatial maps"), ("flatten", "has no spatial maps"),
                    ("avgpool", "is not a stage of the d2l variant")):
    with pytest.raises(ValueError, match=f"layer='{name}' {why}; choose one of conv1, ") as err:
      probe.maps(image[None], name)
    assert str(err.value).endswith("conv5, pool5.")
