"""torchnotes: the small helper every PyTorch learning note shares.

It serves the notes and is not the lesson: device selection, the common flags, seeding,
``check()`` and the built-in stand-in datasets. ``python -m torchnotes`` prints an environment
report and the curriculum.
"""

from .checks import ClaimError, check, check_raises, passed_claims, reset_claims
from .cli import (
    NoteError,
    default_out_dir,
    make_parser,
    output_file,
    output_folder,
    prepare_out_dir,
    progress,
    seed_everything,
    start,
    writable_file,
)
from .device import (
    ENV_VAR,
    DeviceError,
    available_devices,
    float64_device,
    get_device,
    synchronize,
)

__all__ = [
    "ENV_VAR",
    "ClaimError",
    "DeviceError",
    "NoteError",
    "available_devices",
    "check",
    "check_raises",
    "default_out_dir",
    "float64_device",
    "get_device",
    "make_parser",
    "output_file",
    "output_folder",
    "passed_claims",
    "prepare_out_dir",
    "progress",
    "reset_claims",
    "seed_everything",
    "start",
    "synchronize",
    "writable_file",
]
