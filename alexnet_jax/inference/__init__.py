"""Inference with a trained AlexNet: what the tools (predict, visualize) and the trainer's
TensorBoard filters picture need, without any command line.

- model.py: `LoadedModel` and its loaders (a checkpoint of this project, torchvision weights);
- preprocess.py: one image file prepared as the weights' eval pipeline prepares its images;
- classify.py: top-k classes of image files;
- probe.py: `AlexNetProbe`, the stage outputs and attributions of one AlexNet;
- attribution.py: saliency, Grad-CAM, occlusion as pure functions of plain functions;
- filters.py: conv1's filters as one picture (`conv1_filter_grid`, `towers_of`);
- figures.py: visualize's pictures drawn with matplotlib (used as the module,
  `from alexnet_jax.inference import figures`: its names are not handed on here).
Checkpoints are read by alexnet_jax.checkpoint (`resolve`, `read_for_inference`).
"""

from alexnet_jax.inference.attribution import (
    grad_cam,
    occlusion_map,
    occlusion_starts,
    occlusion_to_pixels,
    saliency,
    upsample,
)
from alexnet_jax.inference.classify import find_images, predict_files, top_k
from alexnet_jax.inference.filters import (
    conv1_filter_grid,
    fitting_columns,
    grid_columns,
    tile,
    towers_of,
)
from alexnet_jax.inference.model import (
    LoadedModel,
    load_model,
    load_model_from_torchvision,
    load_model_from_workdir,
)
from alexnet_jax.inference.preprocess import (
    TORCHVISION_CROP,
    TORCHVISION_RESIZE,
    TORCHVISION_SOURCE,
    is_imagenet,
    load_image,
    torchvision_preprocessing,
)
from alexnet_jax.inference.probe import AlexNetProbe, alexnet_head, resize_to_model

__all__ = [
    "AlexNetProbe", "LoadedModel", "TORCHVISION_CROP", "TORCHVISION_RESIZE",
    "TORCHVISION_SOURCE", "alexnet_head", "conv1_filter_grid", "find_images", "fitting_columns",
    "grad_cam", "grid_columns", "is_imagenet", "load_image", "load_model",
    "load_model_from_torchvision", "load_model_from_workdir", "occlusion_map",
    "occlusion_starts", "occlusion_to_pixels", "predict_files", "resize_to_model", "saliency",
    "tile", "top_k", "towers_of", "torchvision_preprocessing", "upsample",
]
