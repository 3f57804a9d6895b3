"""Reading the learner's own photos: what happens to each file before training sees it.

Photos come from phones, messengers and old folders, so a folder of them holds surprises.
`scan(folder, resolution)` looks at every entry once, without any model, and says what it found:

1. **Listing.** A file is a photo by its name's ending (IMAGE_SUFFIXES), and a `.txt` file is
   its caption if it has the photo's name (00.txt for 00.jpg; one with no such photo is named).
   Everything else is ignored, and named in one line: folders (photos inside them are not
   read), system files (.DS_Store, Thumbs.db, desktop.ini, a Mac's "._" files, phones' edit
   notes .aae and .xmp), and other files (README.md, a video).
2. **The header.** Opening a file reads only its first bytes: its format and its size. A photo
   over MAX_MEGAPIXELS is refused there, before its pixels are decoded (a 30000 x 30000 PNG
   would need 2.7 GB of memory; a file made to do that is a "decompression bomb").
3. **Decoding, at reduced size.** A JPEG is decoded straight at 1/2, 1/4 or 1/8 of its size
   (JPEG can do that cheaply: `draft`), as close above the training resolution as it goes; other
   formats are decoded whole. Then the photo is turned upright (phones store rotation as an EXIF
   note) and shrunk so its short side is the training resolution. Only the first frame of an
   animated GIF or WebP, or of a camera's MPO file, is used. A damaged file (cut short by an
   interrupted upload, or a document renamed .jpg) fails here and is skipped, named.
4. **8-bit RGB.** Every other kind of pixel is made RGB: greyscale, palette, CMYK; 16-bit and
   float greyscale is *scaled* into 0-255 (a plain conversion cuts it at 255 and turns it white);
   transparent parts are laid on neutral grey (a plain conversion makes them black).
5. **Checks by name.** Warnings, not refusals: a photo smaller than the training resolution
   (enlarged, so blurry), one that looks like a copy of another (a difference hash, below),
   a caption longer than the 77 tokens SD reads. A caption file must be UTF-8 text (a byte-order
   mark, as Windows Notepad writes, is fine; so is UTF-16 with its byte-order mark); any other
   encoding, or an empty caption, is an error to fix, since guessing could put wrong words in
   the prompt.

Formats: JPEG, PNG, WebP, GIF, BMP, TIFF, MPO, AVIF (Pillow reads it from 11.3 on; an older
Pillow names the file and asks for a JPEG or PNG) and HEIC/HEIF, iPhones' format (with the
pillow-heif package, installed with the course; without it the file is named the same way).

`report.check()` raises a DreamlabError if nothing can be used (or a caption must be fixed),
`print(report)` says what will be used and what is skipped and why, and `preview(report)` shows
the photos cropped exactly as training crops them.
"""

import codecs
import itertools
import re
import textwrap
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import PIL
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError, features

from .errors import DreamlabError

try:  # iPhones' photos: pillow-heif teaches Pillow to open .heic files
    from pillow_heif import register_heif_opener

    register_heif_opener()
    HEIF = True
except ImportError:
    HEIF = False
AVIF = "avif" in features.modules and features.check_module("avif")  # Pillow >= 11.3

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff",
                  ".mpo", ".heic", ".heif", ".hif", ".avif"}
# Files that operating systems, phones and photo editors leave beside photos, never photos
SYSTEM_FILES = {"thumbs.db", "ehthumbs.db", "desktop.ini", "icon\r"}
SIDECAR_SUFFIXES = {".aae", ".xmp"}  # an iPhone's edit notes, a photo editor's settings

# 90 megapixels: every phone's usual photo passes (48 MP on iPhones, 50 on Pixels), a 108 or
# 200 MP "high resolution mode" one does not. Decoding the largest allowed PNG whole takes about
# 0.3 GB (up to 0.5 for 16-bit or transparent ones). Pillow itself warns from 89 MP and refuses
# above 179 MP.
MAX_MEGAPIXELS = 90
GREY = (128, 128, 128)  # behind transparent parts: the middle of the [-1, 1] range, neither black nor white
SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
ORIENTATION = ExifTags.Base.Orientation

# Near-duplicates: a difference hash compares each of 16 x 16 cells of a tiny grey thumbnail with
# its right-hand neighbour (brighter or darker). Steps of under 8 grey levels count as flat and
# are left out (on white backgrounds they are noise). Two photos whose steps disagree in at most
# 7 % of places are copies. Measured on the DreamBooth dataset's 52 photos, scanned at 64 to 512 px:
# a copy shrunk to a third or a sixth and saved again at JPEG quality 50 or 20 disagrees in at most
# 2 % (6 % at 64 px), a copy cropped by 3 % in 5-8 %, and two different photos of one subject in at
# least 10 % (two poses of the red cartoon on white; most pairs: around 50 %).
HASH_SIZE = 16
FLAT_STEP = 8
DUPLICATE_DISTANCE = 0.07


class Unreadable(Exception):
    """Why a file cannot be used, and what to do about it: one line of the report."""


@dataclass
class Photo:
    """One photo that will be used: its file, caption, warnings, and its pixels as training gets them."""

    path: Path
    size: tuple[int, int]  # its full size in the file, upright
    image: Image.Image = field(repr=False)  # upright 8-bit RGB, short side shrunk to the resolution
    caption: str | None = None  # from path.txt; None: the instance prompt
    # Each says what, then after ": " what follows or what to do; a picture's title shows the first part
    warnings: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.name

    def title(self, prompt: str | None = None, width: int = 34) -> str:
        """Name, prompt and warnings (their first part), wrapped for a picture's title."""
        lines = [self.name, self.caption or prompt or "(the instance prompt)",
                 *(f"\u26a0 {w.split(': ')[0]}" for w in self.warnings)]
        return "\n".join(textwrap.fill(line, width) for line in lines)


@dataclass
class PhotoReport:
    """What `scan` found in a folder: the photos to use, and the files skipped and why."""

    folder: Path
    what: str  # "instance", "class", "your photos": for the messages
    resolution: int
    photos: list[Photo] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (file, why and what to do)
    ignored: list[Path] = field(default_factory=list)  # folders, system files, other files
    errors: list[str] = field(default_factory=list)  # caption files to fix before training

    def check(self) -> "PhotoReport":
        """Raise a DreamlabError if training cannot start on this folder; else return the report."""
        if self.errors:
            raise DreamlabError(f"{self.what} folder {self.folder}: fix these caption files first:\n"
                                + "\n".join(f"  {e}" for e in self.errors))
        if not self.photos:
            readable = ", ".join(sorted(IMAGE_SUFFIXES))
            ignored = f"\nIgnored: {self._ignored_names()}" if self.ignored else ""
            if self.skipped:
                raise DreamlabError(f"{self.what} folder {self.folder} has no images that can be used "
                                    f"({readable}). Skipped:\n{self._skipped_lines()}{ignored}")
            there = f" It holds only: {self._ignored_names()}." if self.ignored else " It is empty."
            raise DreamlabError(f"{self.what} folder {self.folder} has no images ({readable}).{there}")
        return self

    def __str__(self) -> str:
        count = f"{len(self.photos)} photo{'s' * (len(self.photos) != 1)}" if self.photos else "no photos"
        lines = [f"{self.what} folder {self.folder}, for training at {self.resolution} px:",
                 f"using {count}{':' * bool(self.photos)}"]
        for photo in self.photos:
            caption = f'  caption: "{photo.caption}"' if photo.caption else ""
            lines.append(f"  {photo.name} ({photo.size[0]}x{photo.size[1]}){caption}")
            lines += [f"      warning: {w}" for w in photo.warnings]
        if self.skipped:
            lines.append(f"skipping {len(self.skipped)}:\n{self._skipped_lines()}")
        if self.errors:
            lines.append("to fix before training:\n" + "\n".join(f"  {e}" for e in self.errors))
        if self.ignored:
            lines.append(f"ignoring {self._ignored_names()}")
        return "\n".join(lines)

    def _skipped_lines(self) -> str:
        return "\n".join(f"  {path.name}: {why}" for path, why in self.skipped)

    def _ignored_names(self) -> str:
        """One line: `.DS_Store (system files); README.md (not photos); raw/ (folders: ...)`."""
        kinds = {"system files": [], "not photos": [], "folders: photos inside them are not read": []}
        for path in self.ignored:
            kind = "folders: photos inside them are not read" if path.is_dir() else (
                "system files" if is_system_file(path) else "not photos")
            kinds[kind].append(path.name + "/" * path.is_dir())
        return "; ".join(f"{', '.join(names)} ({kind})" for kind, names in kinds.items() if names)


# --- Listing -------------------------------------------------------------------------------------

def is_system_file(path: Path) -> bool:
    """.DS_Store, ._photo.jpg (a Mac's notes about photo.jpg), Thumbs.db, an iPhone's .aae, ..."""
    name = path.name
    return name.startswith(".") or name.lower() in SYSTEM_FILES or path.suffix.lower() in SIDECAR_SUFFIXES


def is_image_file(path: Path) -> bool:
    """A file (not a folder named photo.jpg) with a photo's name that is not a system file."""
    return path.suffix.lower() in IMAGE_SUFFIXES and path.is_file() and not is_system_file(path)


def _is_text_file(path: Path) -> bool:
    return path.suffix.lower() == ".txt" and path.is_file() and not is_system_file(path)


def scan(folder, resolution: int = 512, tokenizer=None, what: str = "instance") -> PhotoReport:
    """Look at every entry of `folder` and sort it: used, skipped (and why), or ignored.

    Cheap enough to run before loading a model: each photo's header, then one decode at reduced
    size. `tokenizer` (SD's) counts the captions' tokens; without it they are estimated."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DreamlabError(f"{what} folder {folder} does not exist (or is not a folder).")
    report = PhotoReport(folder, what, resolution)
    entries = sorted(folder.iterdir())
    photo_names = {p.stem for p in entries if is_image_file(p)}
    for entry in entries:
        if is_image_file(entry):
            _add_photo(report, entry, tokenizer)
        elif _is_text_file(entry) and entry.stem in photo_names:
            continue  # a caption, read with its photo
        elif _is_text_file(entry):  # a caption gone astray?
            report.skipped.append((entry, f"a text file, but no photo is named {entry.stem}: a caption "
                                   f"has its photo's name ({entry.stem}.txt for {entry.stem}.jpg)"))
        else:  # folders, system files, documents, videos
            report.ignored.append(entry)
    _warn_duplicates(report.photos)
    return report


def _add_photo(report: PhotoReport, path: Path, tokenizer) -> None:
    notes = []
    try:
        image, size = read_image(path, report.resolution, notes)
    except Unreadable as why:
        report.skipped.append((path, str(why)))
        return
    photo = Photo(path, size, image, warnings=notes)
    if min(size) < report.resolution:
        enlarged = report.resolution / min(size)
        photo.warnings.insert(0, f"small, {size[0]}x{size[1]} px: enlarged {enlarged:.3g} times to the "
                              f"{report.resolution} px of training, so blurry; a larger photo is better")
    caption_file = path.with_suffix(".txt")
    if caption_file.is_file():  # (a folder named 00.txt is no caption)
        try:
            photo.caption = read_caption(caption_file)
        except Unreadable as why:
            report.errors.append(f"{caption_file.name} {why}")
        else:
            photo.warnings += _caption_warnings(photo.caption, caption_file, tokenizer)
    report.photos.append(photo)


# --- One image file ------------------------------------------------------------------------------

def read_image(source, resolution: int | None = None, notes: list | None = None):
    """One image file (a path or an open file) -> (upright 8-bit RGB image, its upright full size).

    With `resolution`, the image is decoded at reduced size and shrunk so its short side is
    `resolution` (never enlarged). Raises Unreadable, saying why; adds remarks to `notes`."""
    notes = [] if notes is None else notes
    with open_header(source) as image:
        width, height = image.size  # the full size, from the header
        try:
            frames = getattr(image, "n_frames", 1)
            if resolution:
                _draft(image, resolution)
            image.load()
        except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError... for damaged data
            raise Unreadable(f"cannot be decoded ({_one_line(e)}){_DAMAGED}") from None
        if frames > 1 and image.format != "MPO":  # (an MPO's other frames: a camera's extra views)
            notes.append(f"animated ({frames} frames): only the first is used")
        if _orientation(image) in (5, 6, 7, 8):  # stored a quarter turn round: width and height swap
            width, height = height, width
        image = _upright(image)
        top = 65535 if image.mode in SIXTEEN_BIT else None  # (32-bit and float: to_8bit guesses)
        if image.mode in SIXTEEN_BIT:  # as 32-bit integers: Pillow resizes big-endian 16-bit wrongly
            image = image.convert("I")
        elif image.mode in ("1", "P", "PA"):  # a palette cannot be resized smoothly: colours first
            image = image.convert("RGBA" if _has_transparency(image) else "RGB")
        if resolution:
            image = shrink(image, resolution)  # (before to_rgb: a 16-bit photo is converted small)
        if _partly_transparent(image):
            notes.append("has transparent parts: they are filled with grey")
        try:
            image = to_rgb(image, top)
        except ValueError as e:
            raise Unreadable(f"its colour mode {image.mode} cannot be made RGB ({e}): save it again "
                             "as an 8-bit RGB JPEG or PNG") from None
    return image, (width, height)


def open_header(source) -> Image.Image:
    """Open a file reading only its header (format and size): refuse it there if it is too large."""
    try:
        with warnings.catch_warnings():  # (Pillow's warning above 89 MP: the check below decides)
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(source)
    except Image.DecompressionBombError:
        limit = 2 * Image.MAX_IMAGE_PIXELS / 1e6
        raise Unreadable(f"far too large: over {limit:.0f} megapixels (Pillow's limit){_SHRINK}") from None
    except UnidentifiedImageError:
        if isinstance(source, (str, Path)) and Path(source).stat().st_size == 0:
            raise Unreadable(f"is empty (0 bytes){_DAMAGED}") from None
        raise Unreadable(_unknown_format(_suffix(source))) from None
    except Exception as e:  # no permission, or a reader's own error
        raise Unreadable(f"cannot be opened ({_one_line(e)}){_DAMAGED}") from None
    width, height = image.size
    if width * height > MAX_MEGAPIXELS * 1e6:
        image.close()
        raise Unreadable(f"too large: {width}x{height} is {width * height / 1e6:.0f} megapixels, over the "
                         f"{MAX_MEGAPIXELS} read here{_SHRINK}")
    return image


_SHRINK = ": save a smaller copy, 2000 to 4000 px wide (training uses far fewer), and use that"
_DAMAGED = ": the file is damaged or cut short (an interrupted upload or copy?): copy it again, or remove it"


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _suffix(source) -> str:
    name = source if isinstance(source, (str, Path)) else getattr(source, "name", "")
    return Path(str(name)).suffix.lower()


def _unknown_format(suffix: str) -> str:
    if suffix in (".heic", ".heif", ".hif") and not HEIF:
        return ("an iPhone HEIC photo, and pillow-heif is not installed here: `pip install pillow-heif`, "
                "or convert it to JPEG (iPhone: Settings > Camera > Formats > Most Compatible)")
    if suffix == ".avif" and not AVIF:
        return (f"an AVIF image, which Pillow {PIL.__version__} here cannot read (Pillow reads AVIF from "
                "11.3 on): convert it to JPEG or PNG, or `pip install -U pillow`")
    return (f"not an image that can be read here (is it really a {suffix} file, or another file "
            "renamed?): remove it, or open it and save it again as JPEG or PNG")


def _draft(image: Image.Image, resolution: int) -> None:
    """Ask a JPEG decoder for a smaller picture (1/2, 1/4 or 1/8 of each side) whose short side is
    still at least `resolution`: up to 64 times less time and memory. Other formats ignore this."""
    width, height = image.size
    short = min(width, height)
    if short > resolution:
        image.draft(image.mode, (width * resolution // short, height * resolution // short))


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(ORIENTATION, 1))
    except Exception:  # a damaged EXIF block (messengers rewrite them): take the photo as stored
        return 1


def _upright(image: Image.Image) -> Image.Image:
    """Turn the photo as its EXIF orientation note says (phones store pixels sideways)."""
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # a damaged EXIF block: as stored rather than not at all
        return image


def shrink(image: Image.Image, resolution: int) -> Image.Image:
    """Scale down so the short side is `resolution` (never up: a small photo stays as it is)."""
    width, height = image.size
    scale = resolution / min(width, height)
    if scale >= 1:
        return image
    return image.resize((max(resolution, round(width * scale)), max(resolution, round(height * scale))),
                        Image.Resampling.LANCZOS)


def _has_transparency(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info


def _partly_transparent(image: Image.Image) -> bool:
    if image.mode in (*SIXTEEN_BIT, "I", "F") or not _has_transparency(image):
        return False
    return image.convert("RGBA").getchannel("A").getextrema()[0] < 255


def to_rgb(image: Image.Image, top: float | None = None) -> Image.Image:
    """Any kind of pixel -> 8-bit RGB, the only kind training reads. `top`: the value that is white
    in a 32-bit or float grey image (None: guessed from its values; 16-bit images say it)."""
    if image.mode in SIXTEEN_BIT:
        image, top = image.convert("I"), 65535
    if image.mode in ("I", "F"):
        return Image.fromarray(to_8bit(np.asarray(image), top)).convert("RGB")
    if _has_transparency(image):  # lay it on grey: a plain conversion would leave black there
        background = Image.new("RGBA", image.size, (*GREY, 255))
        return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")  # greyscale, palette, CMYK, YCbCr: Pillow converts these right


def to_8bit(values: np.ndarray, top: float | None = None) -> np.ndarray:
    """Grey values stored in 0-`top` -> 0-255, scaled (a plain conversion cuts them at 255, which
    turns most of a 16-bit photo white). Without `top`, the smallest usual range that holds the
    values: 0-1 (floats only), 0-255, 0-65535, else 0 to their maximum."""
    usual = (1.0, 255.0, 65535.0) if values.dtype.kind == "f" else (255.0, 65535.0)
    values = np.nan_to_num(values.astype(np.float32))
    if top is None:
        peak = float(values.max()) if values.size else 0.0
        top = next((t for t in usual if peak <= t), peak)
    return np.clip(values * (255.0 / top) + 0.5, 0, 255).astype(np.uint8)


# --- Captions ------------------------------------------------------------------------------------

def read_caption(path: Path) -> str:
    """A caption file's text on one line. UTF-8, with or without a byte-order mark (Windows
    Notepad adds one: read as text it would become three junk tokens), or UTF-16 with its mark.
    Anything else is refused: Latin-1 and its kin read any bytes without error, so a guess could
    quietly put the wrong words in the prompt."""
    data = Path(path).read_bytes()
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        text = data.decode("utf-16")
    else:
        try:
            text = data.decode("utf-8-sig")  # ("-sig": drops the byte-order mark if there is one)
        except UnicodeDecodeError as e:
            raise Unreadable(f"is not UTF-8 text (byte {data[e.start]:#04x} at position {e.start}; saved "
                             "as Latin-1 or Windows-1252?): save it again as UTF-8 (Notepad: Save as > "
                             "Encoding: UTF-8)") from None
    text = " ".join(text.split())  # new lines and tabs: spaces, as the tokenizer reads them anyway
    if not text:
        raise Unreadable("is empty: write a prompt in it, or delete it to use the instance prompt")
    return text


def caption_tokens(text: str, tokenizer=None) -> int:
    """How many tokens SD's text encoder gets for `text`, start and end tokens included.
    Without the tokenizer, an estimate from words and punctuation (rare words are several tokens)."""
    if tokenizer is not None:
        return len(tokenizer(text, verbose=False).input_ids)  # (verbose: no warning when too long)
    return len(re.findall(r"\w+|[^\w\s]", text)) + 2


def _caption_warnings(text: str, path: Path, tokenizer) -> list[str]:
    limit = getattr(tokenizer, "model_max_length", 77)
    count = caption_tokens(text, tokenizer)
    if count <= limit:
        return []
    about = "" if tokenizer is not None else "about "
    return [f"its caption {path.name} is {about}{count} tokens long: SD reads {limit} and cuts the "
            "rest off; shorten it"]


# --- Near-duplicates -----------------------------------------------------------------------------

def fingerprint(image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """A difference hash: for each cell of a 16 x 16 grey thumbnail, whether its right-hand neighbour
    is brighter, and whether that step is large enough to count (not flat)."""
    grey = np.asarray(image.convert("L").resize((HASH_SIZE + 1, HASH_SIZE), Image.Resampling.BOX),
                      dtype=np.float32)
    steps = np.diff(grey, axis=1)
    return steps > 0, np.abs(steps) >= FLAT_STEP


def distance(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> float:
    """The share of non-flat steps (in either photo) that go different ways: 0 for a copy."""
    counted = a[1] | b[1]
    return float((a[0] != b[0])[counted].mean()) if counted.any() else 0.0


def _warn_duplicates(photos: list[Photo]) -> None:
    prints = [fingerprint(p.image) for p in photos]
    for (i, a), (j, b) in itertools.combinations(enumerate(prints), 2):
        if distance(a, b) <= DUPLICATE_DISTANCE:  # said on both: which one is the copy is not known
            for one, other in ((photos[i], photos[j]), (photos[j], photos[i])):
                one.warnings.append(f"looks like a copy of {other.name}: resized or saved again? Keep one, "
                                    "or the model learns that photo twice as hard")


# --- Preview -------------------------------------------------------------------------------------

def preview(report: PhotoReport, resolution: int | None = None, center_crop: bool = True, seed: int = 0,
            epoch: int = 0, prompt: str | None = None) -> tuple[list[Image.Image], list[str]]:
    """The photos exactly as training crops them in pass `epoch` (with `seed` as the dataset's; with
    several subjects, subject i has seed + i), and a title for each: name, prompt, warnings.
    `dreamlab.show.show_images(*preview(report))` draws them."""
    from .data import resize_and_crop  # (data.py imports this module: imported here, when needed)

    resolution = resolution or report.resolution
    images, titles = [], []
    for k, photo in enumerate(report.photos):
        rng = np.random.default_rng((seed, epoch, k))  # the dataset's rule for item k (its first pass)
        images.append(resize_and_crop(photo.image, resolution, center_crop, rng))
        titles.append(photo.title(prompt))
    return images, titles
