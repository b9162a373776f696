"""A pretrained VGG16 from torchvision: the ``weights=`` API, its preprocessing, changing its
head, freezing it, and loading a downloaded weights file safely.

``torchvision.models.vgg16(weights=VGG16_Weights.IMAGENET1K_V1)`` builds the network and fills
it with weights trained on ImageNet; ``weights=None`` leaves it randomly initialised (the old
boolean ``pretrained`` argument is deprecated). ``weights.transforms()`` is the preprocessing
those weights expect. To reuse the network for a 10-class problem you change its last layer
and often freeze the convolutional part, so only the head learns.

A weights file is a pickle, and torch hub's loader runs the full unpickler on it (weights-only
mode off): a file planted in the cache would run its own code. So this note reads the cached
file itself: first its SHA-256 must start with the prefix in the file name
(``vgg16-397923af.pth``, as torch hub publishes it), then it is loaded with
``torch.load(..., weights_only=True)`` and poured in with ``load_state_dict``.

Claims proven:
  1. The ``weights`` enum describes what it builds: the model has exactly
     ``meta["num_params"]`` parameters and as many outputs as ``meta["categories"]`` (1000);
     ``weights.transforms()`` turns an image of any size into a (3, 224, 224) tensor
     normalised with ImageNet's published mean and std: a gray photo (every pixel 128)
     becomes (128/255 - mean) / std in each channel. With the cached file,
     ``load_state_dict`` puts every one of its tensors into the model (without the file the
     note says so and this check has nothing to compare).
  2. ``print(vgg)`` shows why the head is ``classifier[6]``: it is the classifier's last layer,
     the 4096 -> 1000 Linear. ``classifier.add_module("add_linear", nn.Linear(1000, 10))``
     appends a layer after it: the output has 10 classes.
  3. Replacing ``classifier[6]`` with ``nn.Linear(4096, 10)`` swaps the 1000-way layer itself:
     10 classes, and the parameter count drops by exactly the difference of the two layers.
  4. After ``requires_grad_(False)`` on ``features``, a backward pass leaves every frozen
     parameter without a gradient; an optimiser built over the trainable parameters only
     holds the classifier's, by formula, and its step changes them and nothing else.
  5. A weights file whose SHA-256 does not start with the published prefix is refused before
     it is unpickled: the file this note plants in --out-dir holds bytes no unpickler accepts,
     so reading it first would fail with the unpickler's error, not the hash refusal.

Offline there are no weights: if the file is in torch hub's cache it is used, otherwise the
note says so and continues with random weights. ``--download`` fetches 528 MB into that cache
(``$TORCH_HOME/hub/checkpoints``, by default ``~/.cache/torch/hub/checkpoints``; the note prints
the full path first); a connection that stalls for a minute fails with the reason and what to
do. VGG16 ends in an adaptive pool, so any input of at least 32x32 works; smoke mode uses
32x32 images to stay fast.

Run:  python checkpointing/03_model_pretrained.py      (6 s measured on a 2-core CPU)
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn
from torchvision.models import VGG16_Weights, vgg16

from torchnotes import (
    NoteError,
    check,
    check_raises,
    make_parser,
    output_file,
    prepare_out_dir,
    start,
)
from torchnotes.datasets import DOWNLOAD_TIMEOUT_S, short_reason, socket_timeout

FULL = dict(image_size=224, batch=2)      # the size VGG16 was trained on
SMOKE = dict(image_size=32, batch=2)      # smallest input the five max-pools allow
WEIGHTS = VGG16_Weights.IMAGENET1K_V1
IMAGENET_MEAN = (0.485, 0.456, 0.406)     # per RGB channel, published with the ImageNet models
IMAGENET_STD = (0.229, 0.224, 0.225)


def cached_weights_file(weights=WEIGHTS) -> Path:
    """Where torchvision keeps a downloaded weights file: <hub dir>/checkpoints/<file name>."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


def hash_prefix(weights=WEIGHTS) -> str:
    """``vgg16-397923af.pth`` -> ``397923af``: the start of the file's published SHA-256."""
    return Path(urlparse(weights.url).path).stem.rsplit("-", 1)[-1]


def load_cached_weights(cached: Path) -> dict:
    """Verify the hash prefix, then ``torch.load(weights_only=True)``: nothing is executed."""
    digest = hashlib.sha256()
    with open(cached, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if not digest.hexdigest().startswith(hash_prefix()):
        raise NoteError(f"{cached}: its SHA-256 starts {digest.hexdigest()[:8]}, not "
                        f"{hash_prefix()} as published: damaged or not the real file. It was "
                        f"not loaded; delete it and run again with --download, or without "
                        f"--download for random weights.")
    try:
        return torch.load(cached, map_location="cpu", weights_only=True)
    except Exception as err:  # a matching hash that does not load: a bug, say it plainly
        raise NoteError(f"could not read the cached weights {cached} ({short_reason(err)}); "
                        f"delete it and run again with --download.") from None


def download_weights(cached: Path) -> None:
    print(f"ImageNet weights: downloading 528 MB from {WEIGHTS.url}\n  into {cached} "
          f"(a connection silent for {DOWNLOAD_TIMEOUT_S:.0f} s fails)")
    cached.parent.mkdir(parents=True, exist_ok=True)
    try:
        with socket_timeout(DOWNLOAD_TIMEOUT_S):   # bounds every connect and read
            torch.hub.download_url_to_file(WEIGHTS.url, str(cached), hash_prefix=hash_prefix())
    except Exception as err:  # network and file errors come in many types; all mean the same
        raise NoteError(f"could not download the VGG16 weights into {cached} "
                        f"({short_reason(err)}). "
                        f"Check the internet connection (or proxy) and run again with "
                        f"--download, or run without --download to continue with random "
                        f"weights.") from None


def step_1_build(download: bool, device: torch.device, image_size: int, batch: int) -> tuple:
    cached = cached_weights_file()
    if not cached.is_file() and download:
        download_weights(cached)
    pretrained = cached.is_file()
    # The file is checked first: a damaged or planted one stops the note before it spends
    # seconds filling 138 M parameters with random numbers.
    state = load_cached_weights(cached) if pretrained else None
    vgg = vgg16(weights=None)                 # the architecture; weights from the file below
    if pretrained:
        print(f"ImageNet weights: cached at {cached}")
        # strict (the default): every key and shape must fit; the published hash vouches
        # for that, so no planted file reaches this line
        vgg.load_state_dict(state)
        mine = vgg.state_dict()
        check("load_state_dict put every tensor of the file into the model",
              mine.keys() == state.keys() and all(torch.equal(mine[k], v)
                                                  for k, v in state.items()),
              detail=f"{len(state)} tensors")
    else:
        print(f"no cached weights at {cached}: using random weights "
              f"(--download fetches them, 528 MB)")
    n_params = sum(p.numel() for p in vgg.parameters())
    print(f"vgg16(weights={WEIGHTS if pretrained else None}): {n_params:,} parameters")
    check("parameter count == VGG16_Weights meta['num_params']", n_params,
          WEIGHTS.meta["num_params"])
    check("1000 outputs == the 1000 ImageNet categories the weights name",
          vgg.classifier[6].out_features == len(WEIGHTS.meta["categories"]) == 1000)
    preprocess = WEIGHTS.transforms()         # resize 256, center-crop 224, ImageNet mean/std
    print(f"WEIGHTS.transforms(): {preprocess}")
    gray = preprocess(torch.full((3, 300, 400), 128, dtype=torch.uint8))   # (3, 224, 224)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float64).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float64).view(3, 1, 1)
    # float32 output of size ~2: rounding is ~2e-7, so 1e-6 leaves room and nothing more
    check("weights.transforms(): gray 300x400 -> 224x224 of (128/255 - mean) / std",
          gray, ((128 / 255 - mean) / std).expand(3, 224, 224), atol=1e-6,
          detail=f"{gray.dtype}")
    if image_size == 224:                     # photos of another size, preprocessed
        photos = torch.randint(0, 256, (batch, 3, 300, 400), dtype=torch.uint8)  # (B, 3, H, W)
        x = preprocess(photos)                # (B, 3, 224, 224) float, normalised
    else:                                     # smoke: small inputs, same code
        x = torch.rand(batch, 3, image_size, image_size)
    return vgg.to(device).eval(), pretrained, x.to(device)


def step_2_add_module(vgg: nn.Module, x: torch.Tensor) -> tuple:
    print(vgg)                                        # features, avgpool, classifier (0..6)
    linears = [i for i, m in enumerate(vgg.classifier) if isinstance(m, nn.Linear)]
    check("the 1000-way head is classifier[6], the classifier's last layer",
          linears[-1] == 6 == len(vgg.classifier) - 1
          and vgg.classifier[6].out_features == 1000, detail=f"Linear layers at {linears}")
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
    # The optimiser gets the trainable parameters only (the spec's filter on requires_grad).
    optimizer = torch.optim.SGD(filter(lambda p: p.requires_grad, vgg.parameters()), lr=0.01)
    in_optimizer = sum(p.numel() for g in optimizer.param_groups for p in g["params"])
    # classifier: Linear(25088, 4096), Linear(4096, 4096), Linear(4096, 10), each with a bias
    formula = (512 * 7 * 7 * 4096 + 4096) + (4096 * 4096 + 4096) + (4096 * 10 + 10)
    check("the optimiser holds exactly the classifier's parameters, by formula", in_optimizer,
          formula)
    before = [p.detach().clone() for p in frozen] + [vgg.classifier[6].weight.detach().clone()]
    optimizer.step()
    check("its step moved the new head and left every frozen weight as it was",
          all(torch.equal(a, p) for a, p in zip(before[:-1], frozen, strict=True))
          and not torch.equal(before[-1], vgg.classifier[6].weight))
    return dict(frozen=sum(p.numel() for p in frozen), trainable=n_trainable)


def step_5_refuse_a_planted_file(out_dir: Path) -> str:
    """A file under the published name whose bytes are not the published ones: never loaded."""
    planted = output_file(out_dir, f"planted-{cached_weights_file().name}")
    # Bytes no unpickler accepts: had they been read before the hash was checked, the error
    # would be the unpickler's, which lacks "not loaded". BaseException, not NoteError (a
    # SystemExit), so that such an error fails this claim instead of escaping it.
    planted.write_bytes(b"planted: neither a zip archive nor a pickle\n")
    return check_raises("a weights file whose SHA-256 does not match is refused, unread",
                        BaseException, load_cached_weights, planted, match="not loaded")


def main(argv=None) -> dict:
    parser = make_parser(__file__, __doc__)
    parser.add_argument("--download", action="store_true",
                        help="download the ImageNet weights (528 MB) into torch hub's cache "
                             "($TORCH_HOME/hub/checkpoints) if they are not there")
    args, device = start(parser, argv)
    cfg = SMOKE if args.smoke else FULL
    out_dir = prepare_out_dir(args.out_dir)
    vgg, pretrained, x = step_1_build(args.download, device, cfg["image_size"],
                                     cfg["batch"])
    added = step_2_add_module(vgg, x)
    replaced = step_3_replace_layer(vgg, x)
    counts = step_4_freeze_features(vgg, x)
    step_5_refuse_a_planted_file(out_dir)
    weights = "ImageNet weights" if pretrained else "random weights (no cached ImageNet file)"
    print(f"summary: {weights}; both heads give {added[1]} classes; "
          f"{counts['trainable']:,} of {counts['trainable'] + counts['frozen']:,} "
          f"parameters train")
    return dict(pretrained=pretrained, add_module_shape=added, replaced_shape=replaced, **counts)


if __name__ == "__main__":
    main()
