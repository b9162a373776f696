"""A pretrained VGG16 from torchvision: the ``weights=`` API, changing its head, freezing it.

``torchvision.models.vgg16(weights=VGG16_Weights.IMAGENET1K_V1)`` builds the network and fills
it with weights trained on ImageNet; ``weights=None`` leaves it randomly initialised (the old
boolean ``pretrained`` argument is deprecated). To reuse it for a 10-class problem you change
its last layers and often freeze the convolutional part, so only the new head learns.

Claims proven:
  1. The ``weights`` enum describes what it builds: the model has exactly
     ``meta["num_params"]`` parameters and as many outputs as ``meta["categories"]`` (1000).
     Cached weights, when present, are the ones loaded.
  2. ``classifier.add_module("add_linear", nn.Linear(1000, 10))`` appends a layer after the
     1000-way one: the output has 10 classes.
  3. Replacing ``classifier[6]`` with ``nn.Linear(4096, 10)`` swaps the 1000-way layer itself:
     10 classes, and the parameter count drops by exactly the difference of the two layers.
  4. After ``requires_grad_(False)`` on ``features``, a backward pass leaves every frozen
     parameter without a gradient, and the trainable count is the classifier's, by formula.

Offline there are no weights: if ``VGG16_Weights.IMAGENET1K_V1`` is in torch hub's cache it is
used, otherwise the note says so and continues with random weights. ``--download`` fetches
528 MB into that cache (``$TORCH_HOME/hub/checkpoints``, by default
``~/.cache/torch/hub/checkpoints``; the note prints the full path first); a connection that
stalls for a minute fails with the reason and what to do. VGG16 ends in an adaptive pool, so
any input of at least 32x32 works; smoke mode uses 32x32 images to stay fast.

Run:  python checkpointing/03_model_pretrained.py      (about 5 s on a laptop CPU)
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn
from torchvision.models import VGG16_Weights, vgg16

from torchnotes import NoteError, check, make_parser, start
from torchnotes.datasets import DOWNLOAD_TIMEOUT_S, short_reason, socket_timeout

FULL = dict(image_size=224, batch=2)      # the size VGG16 was trained on
SMOKE = dict(image_size=32, batch=2)      # smallest input the five max-pools allow
WEIGHTS = VGG16_Weights.IMAGENET1K_V1


def cached_weights_file(weights=WEIGHTS) -> Path:
    """Where torchvision keeps a downloaded weights file: <hub dir>/checkpoints/<file name>."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


def load_pretrained(cached: Path, download: bool) -> nn.Module:
    """``vgg16(weights=WEIGHTS)``: reads ``cached``, or downloads it there; failures explained."""
    was_cached = cached.is_file()
    if was_cached:
        print(f"ImageNet weights: cached at {cached}")
    else:
        print(f"ImageNet weights: downloading 528 MB from {WEIGHTS.url}\n  into {cached} "
              f"(a connection silent for {DOWNLOAD_TIMEOUT_S:.0f} s fails)")
    try:
        with socket_timeout(DOWNLOAD_TIMEOUT_S):   # bounds every connect and read
            return vgg16(weights=WEIGHTS, progress=download)
    except Exception as err:  # network and file errors come in many types; all mean the same
        if was_cached:
            raise NoteError(f"could not read the cached weights {cached} "
                            f"({short_reason(err)}). The file may be damaged: delete it and "
                            f"run again with --download, or delete it and run without "
                            f"--download for random weights.") from None
        raise NoteError(f"could not download the VGG16 weights into {cached} "
                        f"({short_reason(err)}). "
                        f"Check the internet connection (or proxy) and run again with "
                        f"--download, or run without --download to continue with random "
                        f"weights.") from None


def step_1_build(download: bool, device: torch.device) -> tuple[nn.Module, bool]:
    cached = cached_weights_file()
    pretrained = cached.is_file() or download
    if pretrained:                            # torchvision reads the cache, or downloads
        vgg = load_pretrained(cached, download)
    else:
        print(f"no cached weights at {cached}: using random weights "
              f"(--download fetches them, 528 MB)")
        vgg = vgg16(weights=None)
    n_params = sum(p.numel() for p in vgg.parameters())
    print(f"vgg16(weights={WEIGHTS if pretrained else None}): {n_params:,} parameters, "
          f"head {vgg.classifier[6]}")
    check("parameter count == VGG16_Weights meta['num_params']", n_params,
          WEIGHTS.meta["num_params"])
    check("1000 outputs == the 1000 ImageNet categories the weights name",
          vgg.classifier[6].out_features == len(WEIGHTS.meta["categories"]) == 1000)
    if pretrained:
        file = torch.load(cached, map_location="cpu")
        check("the model holds the cached weights", all(
            torch.equal(t.cpu(), file[k]) for k, t in vgg.state_dict().items()))
    return vgg.to(device).eval(), pretrained


def step_2_add_module(vgg: nn.Module, x: torch.Tensor) -> tuple:
    vgg.classifier.add_module("add_linear", nn.Linear(1000, 10).to(x.device))
    print(f"after add_module: classifier[-2:] = {list(vgg.classifier)[-2:]}")
    with torch.no_grad():
        out = vgg(x)                                  # (B, 1000) -> add_linear -> (B, 10)
    check("add_module: the output has 10 classes, the 1000-way layer is still there",
          out.shape == (x.shape[0], 10) and vgg.classifier[6].out_features == 1000,
          detail=f"output {tuple(out.shape)}")
    del vgg.classifier.add_linear                     # undo, so step 3 starts from the original
    return tuple(out.shape)


def step_3_replace_layer(vgg: nn.Module, x: torch.Tensor) -> tuple:
    before = sum(p.numel() for p in vgg.parameters())
    vgg.classifier[6] = nn.Linear(4096, 10).to(x.device)   # replaces the 4096 -> 1000 layer
    after = sum(p.numel() for p in vgg.parameters())
    with torch.no_grad():
        out = vgg(x)
    print(f"after replacing classifier[6]: {vgg.classifier[6]}, output {tuple(out.shape)}")
    check("replace classifier[6]: the output has 10 classes", out.shape == (x.shape[0], 10))
    check("the parameter count dropped by (4096*1000 + 1000) - (4096*10 + 10)",
          before - after, (4096 * 1000 + 1000) - (4096 * 10 + 10))
    return tuple(out.shape)


def step_4_freeze_features(vgg: nn.Module, x: torch.Tensor) -> dict:
    vgg.features.requires_grad_(False)                # the convolutional part stays as it is
    vgg.train()
    loss = nn.functional.cross_entropy(vgg(x), torch.zeros(x.shape[0], dtype=torch.long,
                                                           device=x.device))
    loss.backward()
    frozen = list(vgg.features.parameters())
    trainable = [p for p in vgg.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in trainable)
    print(f"frozen: {sum(p.numel() for p in frozen):,} parameters | trainable: {n_trainable:,}")
    check("every frozen parameter has no gradient after backward()",
          all(p.grad is None for p in frozen))
    check("every trainable parameter got one", all(p.grad is not None for p in trainable))
    # classifier: Linear(25088, 4096), Linear(4096, 4096), Linear(4096, 10), each with a bias
    formula = (512 * 7 * 7 * 4096 + 4096) + (4096 * 4096 + 4096) + (4096 * 10 + 10)
    check("trainable count == the classifier's, by formula", n_trainable, formula)
    return dict(frozen=sum(p.numel() for p in frozen), trainable=n_trainable)


def main(argv=None) -> dict:
    parser = make_parser(__file__, __doc__)
    parser.add_argument("--download", action="store_true",
                        help="download the ImageNet weights (528 MB) into torch hub's cache "
                             "($TORCH_HOME/hub/checkpoints) if they are not there")
    args, device = start(parser, argv)
    cfg = SMOKE if args.smoke else FULL
    vgg, pretrained = step_1_build(args.download, device)
    x = torch.rand(cfg["batch"], 3, cfg["image_size"], cfg["image_size"], device=device)
    added = step_2_add_module(vgg, x)
    replaced = step_3_replace_layer(vgg, x)
    counts = step_4_freeze_features(vgg, x)
    weights = "ImageNet weights" if pretrained else "random weights (no cached ImageNet file)"
    print(f"summary: {weights}; both heads give {added[1]} classes; "
          f"{counts['trainable']:,} of {counts['trainable'] + counts['frozen']:,} "
          f"parameters train")
    return dict(pretrained=pretrained, add_module_shape=added, replaced_shape=replaced, **counts)


if __name__ == "__main__":
    main()
