"""Plain PyTorch AlexNets: the reference for parity tests and a CPU training benchmark.

Written independently of alexnet_jax (no imports from it), so that logits parity between
the two is evidence that both follow the same architecture:

- ``TorchAlexNetPaper``: the paper's two towers as ``groups=2`` convs, with the LRN
  applied to each tower's half of the channels separately (``TowerLRN``).
- ``TorchAlexNetTorchvision``: the module structure and state_dict keys of
  ``torchvision.models.alexnet`` (features.0 ... classifier.6), without torchvision.
- ``TorchAlexNetD2L``: the d2l textbook net.

Paper and d2l models name their layers conv1..conv5, fc6..fc8, so their state_dict keys
are those of ``alexnet_jax.convert.to_torch_layout``.

Benchmark (prints one JSON line)::

    python benchmarks/torch_reference.py --batch=32 --steps=10 --image_size=227
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch import nn


class TowerLRN(nn.Module):
    """nn.LocalResponseNorm applied to each tower's channels on its own.

    nn.LocalResponseNorm scales by alpha/size; with alpha_divided_by_size=False we hand it
    alpha*size so that the effective scale is alpha, the paper's printed formula.
    """

    def __init__(self, size=5, alpha=1e-4, beta=0.75, k=2.0, towers=2,
                 alpha_divided_by_size=True):
        super().__init__()
        self.towers = towers
        torch_alpha = alpha if alpha_divided_by_size else alpha * size
        self.lrn = nn.LocalResponseNorm(size, alpha=torch_alpha, beta=beta, k=k)

    def forward(self, x):
        return torch.cat([self.lrn(t) for t in torch.chunk(x, self.towers, dim=1)], dim=1)


class TorchAlexNetPaper(nn.Module):
    """Krizhevsky et al. (2012), two towers: grouped conv2/4/5, per-tower LRN, dropout 0.5."""

    def __init__(self, num_classes=1000, in_channels=3, image_size=224, dropout_rate=0.5,
                 lrn_k=2.0, lrn_size=5, lrn_alpha=1e-4, lrn_beta=0.75,
                 lrn_alpha_divided_by_size=True):
        super().__init__()
        if image_size not in (224, 227):
            raise ValueError(f"image_size must be 224 or 227, got {image_size}")
        conv1_padding = 0 if image_size == 227 else 2  # both give 55x55
        self.conv1 = nn.Conv2d(in_channels, 96, 11, stride=4, padding=conv1_padding)
        self.conv2 = nn.Conv2d(96, 256, 5, padding=2, groups=2)
        self.conv3 = nn.Conv2d(256, 384, 3, padding=1)
        self.conv4 = nn.Conv2d(384, 384, 3, padding=1, groups=2)
        self.conv5 = nn.Conv2d(384, 256, 3, padding=1, groups=2)
        self.lrn = TowerLRN(lrn_size, lrn_alpha, lrn_beta, lrn_k, towers=2,
                            alpha_divided_by_size=lrn_alpha_divided_by_size)
        self.pool = nn.MaxPool2d(3, 2)
        self.fc6 = nn.Linear(256 * 6 * 6, 4096)
        self.fc7 = nn.Linear(4096, 4096)
        self.fc8 = nn.Linear(4096, num_classes)
        self.dropout = nn.Dropout(dropout_rate)

    def forward(self, x):
        x = self.pool(self.lrn(torch.relu(self.conv1(x))))
        x = self.pool(self.lrn(torch.relu(self.conv2(x))))
        x = torch.relu(self.conv3(x))
        x = torch.relu(self.conv4(x))
        x = self.pool(torch.relu(self.conv5(x)))
        x = torch.flatten(x, 1)
        x = self.dropout(torch.relu(self.fc6(x)))
        x = self.dropout(torch.relu(self.fc7(x)))
        return self.fc8(x)


class TorchAlexNetTorchvision(nn.Module):
    """Same modules and state_dict keys as torchvision.models.alexnet."""

    def __init__(self, num_classes=1000, in_channels=3, dropout_rate=0.5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 64, kernel_size=11, stride=4, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout_rate),
            nn.Linear(256 * 6 * 6, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout_rate),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x):
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


class TorchAlexNetD2L(nn.Module):
    """d2l.ai's AlexNet: single tower 96/256/384/384/256, no LRN, 1 channel, 10 classes."""

    def __init__(self, num_classes=10, in_channels=1, image_size=224, dropout_rate=0.5):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 96, 11, stride=4, padding=1)
        self.conv2 = nn.Conv2d(96, 256, 5, padding=2)
        self.conv3 = nn.Conv2d(256, 384, 3, padding=1)
        self.conv4 = nn.Conv2d(384, 384, 3, padding=1)
        self.conv5 = nn.Conv2d(384, 256, 3, padding=1)
        self.pool = nn.MaxPool2d(3, 2)
        with torch.no_grad():  # fc6's input size follows the image size
            flat = self._features(torch.zeros(1, in_channels, image_size, image_size)).shape[1]
        self.fc6 = nn.Linear(flat, 4096)
        self.fc7 = nn.Linear(4096, 4096)
        self.fc8 = nn.Linear(4096, num_classes)
        self.dropout = nn.Dropout(dropout_rate)

    def _features(self, x):
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        x = torch.relu(self.conv3(x))
        x = torch.relu(self.conv4(x))
        x = self.pool(torch.relu(self.conv5(x)))
        return torch.flatten(x, 1)

    def forward(self, x):
        x = self.dropout(torch.relu(self.fc6(self._features(x))))
        x = self.dropout(torch.relu(self.fc7(x)))
        return self.fc8(x)


def build_torch_model(variant: str, **kwargs) -> nn.Module:
    """The reference model of ``variant`` ('paper', 'torchvision', 'd2l')."""
    classes = {"paper": TorchAlexNetPaper, "torchvision": TorchAlexNetTorchvision,
               "d2l": TorchAlexNetD2L}
    if variant not in classes:
        raise ValueError(f"variant={variant!r} is not one of {list(classes)}")
    return classes[variant](**kwargs)


# --------------------------------------------------------------------------------------
# Benchmark
# --------------------------------------------------------------------------------------

def benchmark(variant="paper", batch=32, steps=10, image_size=227, warmup=2, seed=0,
              device="cpu", bf16=False, channels_last=False, compile=False) -> dict:
    """Time SGD(momentum 0.9, weight decay 5e-4) training steps on random data, synchronized
    only after the warm-up and at the end of the timed steps (as alexnet_jax's timing does).

    device: 'cpu' or 'cuda'. bf16: bfloat16 autocast (parameters stay float32, as
    alexnet_jax's model.dtype=bfloat16). channels_last: NHWC memory format (what cuDNN is
    fastest with). compile: torch.compile the model (the first steps compile; warmup>=3).
    """
    torch.manual_seed(seed)
    kwargs = {} if variant == "torchvision" else {"image_size": image_size}
    model = build_torch_model(variant, **kwargs).train().to(device)
    in_channels = model.conv1.in_channels if hasattr(model, "conv1") else 3
    num_classes = (model.fc8 if hasattr(model, "fc8") else model.classifier[6]).out_features
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    images = torch.randn(batch, in_channels, image_size, image_size, device=device)
    images = images.contiguous(memory_format=memory_format)
    labels = torch.randint(0, num_classes, (batch,), device=device)
    loss_fn = nn.CrossEntropyLoss()
    forward = torch.compile(model) if compile else model

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(forward(images), labels)
        loss.backward()
        optimizer.step()
        return loss  # no .item(): the steps queue up on the device as a trainer's do

    def finish(loss):
        """Waits for every queued step (the only synchronization of a timing)."""
        if device == "cuda":
            torch.cuda.synchronize()
        return loss.item()

    loss = None
    for _ in range(max(warmup, 3 if compile else 0)):
        loss = step()
    if loss is not None:
        finish(loss)
    start = time.perf_counter()
    for _ in range(steps):
        loss = step()
    finish(loss)
    elapsed = time.perf_counter() - start
    return {
        "framework": "torch", "torch": torch.__version__, "variant": variant,
        "images_per_sec": round(batch * steps / elapsed, 3),
        "step_time_ms": round(1e3 * elapsed / steps, 2),
        "batch": batch, "image_size": image_size,
        "threads": torch.get_num_threads(), "device": device,
        "device_name": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "dtype": "bfloat16" if bf16 else "float32", "channels_last": channels_last,
        "compile": compile,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", default="paper", choices=["paper", "torchvision", "d2l"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--image_size", type=int, default=227)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="0: torch's default")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    parser.add_argument("--channels_last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(json.dumps(benchmark(args.variant, args.batch, args.steps, args.image_size,
                               args.warmup, device=args.device, bf16=args.bf16,
                               channels_last=args.channels_last, compile=args.compile)),
          flush=True)


if __name__ == "__main__":
    main()
