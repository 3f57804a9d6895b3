"""A stand-in for the few torchvision transforms that diffusers' DreamBooth scripts use, in PIL and torch.

diffusers' examples/dreambooth/train_dreambooth.py (and train_dreambooth_lora.py) import
torchvision only for their training photos:

    Compose([Resize(size, interpolation=InterpolationMode.BILINEAR),
             CenterCrop(size) or RandomCrop(size), ToTensor(), Normalize([0.5], [0.5])])

torchvision from the registry does not import beside the CPU build of torch used here, so
`import_script()` imports such a script with this module standing in for torchvision.transforms
(for the script's own import statements only). Each class does what torchvision's does for a PIL
image (torchvision 0.2x's transforms.functional): Resize scales the short side to `size` (the long
side rounded down) with PIL's own filter, and leaves an image already that size untouched;
CenterCrop rounds the offsets as torchvision does; RandomCrop draws them from torch's global
generator, in the same order; ToTensor makes a (C, H, W) float tensor in [0, 1]; Normalize
subtracts the mean and divides by the standard deviation, per channel. Padding (a crop larger
than the picture) is not supported.
"""

import builtins
import enum
import importlib.util
import sys
import types

import numpy as np
import torch
from PIL import Image


class InterpolationMode(enum.Enum):
    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"


PIL_FILTER = {InterpolationMode.NEAREST: Image.Resampling.NEAREST,
              InterpolationMode.NEAREST_EXACT: Image.Resampling.NEAREST,
              InterpolationMode.BILINEAR: Image.Resampling.BILINEAR,
              InterpolationMode.BICUBIC: Image.Resampling.BICUBIC,
              InterpolationMode.BOX: Image.Resampling.BOX,
              InterpolationMode.HAMMING: Image.Resampling.HAMMING,
              InterpolationMode.LANCZOS: Image.Resampling.LANCZOS}


def _pair(size) -> tuple[int, int]:
    """(height, width) from an int or a sequence of one or two ints."""
    if isinstance(size, int):
        return size, size
    return (size[0], size[0]) if len(size) == 1 else (size[0], size[1])


class Compose:
    def __init__(self, transforms):
        self.transforms = transforms

    def __call__(self, image):
        for transform in self.transforms:
            image = transform(image)
        return image


class Resize:
    def __init__(self, size, interpolation=InterpolationMode.BILINEAR, max_size=None, antialias=True):
        if max_size is not None:
            raise NotImplementedError("the stand-in's Resize has no max_size")
        self.size, self.interpolation = size, interpolation

    def __call__(self, image: Image.Image) -> Image.Image:
        w, h = image.size
        if isinstance(self.size, int) or len(self.size) == 1:  # the short side to size
            size = self.size if isinstance(self.size, int) else self.size[0]
            short, long = min(w, h), max(w, h)
            new_short, new_long = size, int(size * long / short)
            new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
        else:
            new_h, new_w = self.size
        if (new_w, new_h) == (w, h):
            return image
        return image.resize((new_w, new_h), PIL_FILTER[InterpolationMode(self.interpolation)])


def _crop(image: Image.Image, top: int, left: int, height: int, width: int) -> Image.Image:
    if height > image.height or width > image.width:
        raise NotImplementedError(f"the stand-in does not pad: a {width}x{height} crop of a "
                                  f"{image.width}x{image.height} picture")
    return image.crop((left, top, left + width, top + height))


class CenterCrop:
    def __init__(self, size):
        self.size = _pair(size)

    def __call__(self, image: Image.Image) -> Image.Image:
        th, tw = self.size
        top, left = int(round((image.height - th) / 2.0)), int(round((image.width - tw) / 2.0))
        return _crop(image, top, left, th, tw)


class RandomCrop:
    def __init__(self, size, padding=None, pad_if_needed=False, fill=0, padding_mode="constant"):
        if padding is not None or pad_if_needed:
            raise NotImplementedError("the stand-in's RandomCrop does not pad")
        self.size = _pair(size)

    def __call__(self, image: Image.Image) -> Image.Image:
        th, tw = self.size
        h, w = image.height, image.width
        if (h, w) == (th, tw):
            return image
        top = torch.randint(0, h - th + 1, size=(1,)).item()
        left = torch.randint(0, w - tw + 1, size=(1,)).item()
        return _crop(image, top, left, th, tw)


class ToTensor:
    def __call__(self, image: Image.Image) -> torch.Tensor:
        array = np.array(image, copy=True)
        if array.ndim == 2:
            array = array[:, :, None]
        tensor = torch.from_numpy(array).permute(2, 0, 1).contiguous()
        return tensor.float().div(255) if tensor.dtype == torch.uint8 else tensor.float()


class Normalize:
    def __init__(self, mean, std, inplace=False):
        self.mean, self.std = mean, std

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        mean = torch.as_tensor(self.mean, dtype=tensor.dtype).view(-1, 1, 1)
        std = torch.as_tensor(self.std, dtype=tensor.dtype).view(-1, 1, 1)
        return (tensor - mean) / std


def import_script(path: str, name: str = "train_dreambooth") -> types.ModuleType:
    """The Python file at `path` as a module (its `if __name__ == "__main__"` does not run), whose
    own import statements get this stand-in for torchvision. Nothing else sees it: the stand-in
    is not put in sys.modules, where transformers would take torchvision for installed (its
    find_spec finds it) and import its image utilities from it."""
    package = types.ModuleType("torchvision")
    package.transforms = sys.modules[__name__]

    def stand_in_import(module, globals=None, locals=None, fromlist=(), level=0):
        if level == 0 and module.split(".")[0] == "torchvision":
            return package.transforms if module == "torchvision.transforms" and fromlist else package
        return builtins.__import__(module, globals, locals, fromlist, level)

    spec = importlib.util.spec_from_file_location(name, path)
    script = importlib.util.module_from_spec(spec)
    script.__builtins__ = {**builtins.__dict__, "__import__": stand_in_import}
    spec.loader.exec_module(script)
    return script
