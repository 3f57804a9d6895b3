"""Photos as learners have them: every awkward kind of file, made here in a tmp folder."""

import io
import struct
import time
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, JpegImagePlugin
from transformers import CLIPTokenizer

from dreamlab import DreamBoothDataset, DreamlabError, list_images, photos
from dreamlab.data import caption_of, open_image, to_tensor, tokenize
from dreamlab.offline import TOKENIZER
from dreamlab.photos import preview, scan


@pytest.fixture(scope="module")
def tokenizer():
    return CLIPTokenizer.from_pretrained(TOKENIZER)  # SD v1's, as the `sd` fixture's model has it


@pytest.fixture(scope="module")
def dog(dreambooth_photos) -> Image.Image:
    """A real photo, at 256 px for speed."""
    return Image.open(dreambooth_photos / "dog" / "00.jpg").convert("RGB").resize((256, 256))


def skipped(report) -> dict:
    return {path.name: why for path, why in report.skipped}


def used(report) -> list[str]:
    return [photo.name for photo in report.photos]


def mean(image) -> float:
    return float(np.asarray(image.convert("L"), dtype=np.float32).mean())


# --- Kinds of pixel --------------------------------------------------------------------------------

@pytest.mark.parametrize("name, make", [
    ("grey16.png", lambda a: Image.fromarray(a.astype(np.uint16) * 257)),  # I;16, as scanners save
    ("grey16b.tif", lambda a: Image.fromarray((a.astype(np.uint16) * 257).astype(">u2"))),  # I;16B
    ("grey32.tif", lambda a: Image.fromarray(a.astype(np.int32) * 257)),  # I, 0-65535
    ("float.tif", lambda a: Image.fromarray(a.astype(np.float32) / 255)),  # F, 0-1
])
def test_high_bit_depth_grey_is_scaled_not_clipped_to_white(tmp_path, dog, name, make):
    source = np.asarray(dog.convert("L"))
    make(source).save(tmp_path / name)
    report = scan(tmp_path, 128).check()
    image = report.photos[0].image
    assert image.mode == "RGB" and image.size == (128, 128)
    assert abs(mean(image) - source.mean()) < 2  # a plain convert("RGB") gives ~254: white
    assert (np.asarray(image) == 255).mean() < 0.05


def test_transparent_parts_are_grey_not_black(tmp_path, dog):
    canvas = Image.new("RGBA", (384, 384), (0, 0, 0, 0))  # transparent black, as editors store it
    canvas.paste(dog, (64, 64))
    canvas.save(tmp_path / "cutout.png")
    Image.new("LA", (200, 200), (0, 0)).save(tmp_path / "la.png")
    palette = Image.new("P", (200, 200), 0)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.paste(1, (50, 50, 150, 150))
    palette.save(tmp_path / "palette.png", transparency=0)  # colour 0 (black) is see-through
    report = scan(tmp_path, 128).check()
    by_name = {p.name: p for p in report.photos}
    for name in ("cutout.png", "la.png", "palette.png"):
        corner = np.asarray(by_name[name].image)[2, 2].astype(int)
        assert np.abs(corner - 128).max() <= 1, name
        assert "has transparent parts: they are filled with grey" in by_name[name].warnings
    middle = np.asarray(by_name["palette.png"].image)[64, 64]
    assert tuple(middle) == (255, 0, 0)


def test_cmyk_jpeg_keeps_its_colours(tmp_path, dog):
    dog.convert("CMYK").save(tmp_path / "print.jpg", quality=95)
    image = scan(tmp_path, 128).check().photos[0].image
    expected = np.asarray(dog.resize((128, 128)), dtype=np.float32).mean(axis=(0, 1))
    assert np.abs(np.asarray(image, dtype=np.float32).mean(axis=(0, 1)) - expected).max() < 6


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_an_animation_gives_its_first_frame_and_says_so(tmp_path, fmt):
    frames = [Image.new("RGB", (128, 128), colour) for colour in ((220, 20, 20), (20, 20, 220), "white")]
    frames[0].save(tmp_path / f"moving.{fmt.lower()}", save_all=True, append_images=frames[1:], duration=100)
    photo = scan(tmp_path, 64).check().photos[0]
    red, green, blue = np.asarray(photo.image, dtype=int)[32, 32]
    assert red > 180 and blue < 60
    assert "animated (3 frames): only the first is used" in photo.warnings


def test_mpo_camera_files_give_their_first_picture(tmp_path, dog, dreambooth_photos):
    blue = Image.new("RGB", (256, 256), "blue")
    dog.save(tmp_path / "stereo.mpo", "MPO", save_all=True, append_images=[blue])
    assert Image.open(tmp_path / "stereo.mpo").format == "MPO"  # Pillow can write one
    photo = scan(tmp_path, 128).check().photos[0]
    assert abs(mean(photo.image) - mean(dog)) < 3 and photo.warnings == []  # not called "animated"
    real = dreambooth_photos / "bear_plushie" / "00.jpg"  # the DreamBooth dataset has MPOs named .jpg
    assert Image.open(real).format == "MPO" and open_image(real, 128).size == (128, 128)


def test_heic_iphone_photos_are_read(tmp_path, dog):
    assert photos.HEIF  # pillow-heif is a dependency
    dog.save(tmp_path / "IMG_0001.HEIC", "HEIF", quality=90)
    report = scan(tmp_path, 128).check()
    assert used(report) == ["IMG_0001.HEIC"]
    assert abs(mean(report.photos[0].image) - mean(dog)) < 3


def test_avif_is_read_where_this_pillow_can_else_named_with_advice(tmp_path, dog):
    if photos.AVIF:  # Pillow >= 11.3 reads (and writes) AVIF
        dog.save(tmp_path / "photo.avif", quality=90)
        assert used(scan(tmp_path, 128).check()) == ["photo.avif"]
    else:
        (tmp_path / "photo.avif").write_bytes(b"\x00\x00\x00\x1cftypavif" + bytes(100))
        assert "convert it to JPEG or PNG" in skipped(scan(tmp_path, 128))["photo.avif"]


def test_heic_and_avif_without_a_reader_are_named_with_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(photos, "HEIF", False)
    monkeypatch.setattr(photos, "AVIF", False)
    (tmp_path / "a.heic").write_bytes(b"not really")
    (tmp_path / "b.avif").write_bytes(b"not really")
    why = skipped(scan(tmp_path, 64))
    assert "pip install pillow-heif" in why["a.heic"] and "Most Compatible" in why["a.heic"]
    assert "here cannot read (Pillow reads AVIF from 11.3 on)" in why["b.avif"]
    assert "convert it to JPEG or PNG" in why["b.avif"]


@pytest.mark.parametrize("name", ["phone.jpg", "phone.heic", "phone.webp", "phone.png"])
def test_exif_rotated_photo_is_upright(tmp_path, name):
    stored = Image.new("RGB", (200, 100), "blue")
    stored.paste((255, 0, 0), (0, 0, 100, 100))  # left half red as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "turn 90 degrees clockwise to view": the red half ends on top
    stored.save(tmp_path / name, exif=exif.tobytes(), quality=95)
    photo = scan(tmp_path, 64).check().photos[0]
    assert photo.size == (100, 200) and photo.image.size == (64, 128)
    red, green, blue = np.asarray(photo.image, dtype=int)[10, 32]
    assert red > 200 and blue < 50


# --- Sizes ---------------------------------------------------------------------------------------

def huge_png(path, width, height):
    """A tiny valid PNG whose header claims width x height: nothing that large is ever allocated."""
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = struct.pack(">II", width, height)  # IHDR's width and height (after the signature)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # its checksum, made right again
    path.write_bytes(bytes(data))


def test_oversized_photos_are_refused_by_name_before_decoding(tmp_path, dog):
    huge_png(tmp_path / "bomb.png", 30000, 30000)  # over Pillow's own limit (179 MP)
    huge_png(tmp_path / "poster.png", 13000, 13000)  # 169 MP: Pillow would decode it, 1.35 GB
    dog.save(tmp_path / "fine.jpg")
    start = time.perf_counter()
    report = scan(tmp_path, 64)
    assert time.perf_counter() - start < 1
    why = skipped(report)
    assert why["bomb.png"].startswith("far too large: over 179 megapixels")
    assert why["poster.png"].startswith("too large: 13000x13000 is 169 megapixels, over the 90")
    assert "save a smaller copy" in why["poster.png"]
    assert used(report) == ["fine.jpg"]
    with pytest.raises(DreamlabError, match="poster.png: too large"):
        open_image(tmp_path / "poster.png")


def test_a_large_jpeg_is_decoded_at_reduced_size(tmp_path, dog, monkeypatch):
    dog.resize((4000, 3000)).save(tmp_path / "big.jpg", quality=85)
    decoded = []
    original = JpegImagePlugin.JpegImageFile.load

    def load(self):  # what the JPEG decoder is asked to produce
        decoded.append(self.size)
        return original(self)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "load", load)
    photo = scan(tmp_path, 256).check().photos[0]
    # 1/8 of each side, still over 256: 64 times fewer pixels decoded
    assert decoded[0] == (500, 375) and set(decoded) == {(500, 375)}
    assert photo.size == (4000, 3000) and photo.image.size == (341, 256)
    assert abs(mean(photo.image) - mean(dog)) < 3
    assert open_image(tmp_path / "big.jpg").size == (4000, 3000)  # (without a resolution: whole)


def test_a_tiny_photo_is_used_and_warned_about(tmp_path, dog):
    dog.resize((8, 8)).save(tmp_path / "thumb.png")
    photo = scan(tmp_path, 64).check().photos[0]
    assert photo.image.size == (8, 8)  # enlarged later, by the crop, like any photo
    assert photo.warnings[0].startswith("small, 8x8 px: enlarged 8 times to the 64 px of training, so blurry")
    assert "thumb.png (8x8)\n      warning: small, 8x8 px: enlarged" in str(scan(tmp_path, 64))
    assert photo.title("a photo of sks dog") == "thumb.png\na photo of sks dog\n\u26a0 small, 8x8 px"


# --- Near-duplicates -------------------------------------------------------------------------------

def test_a_resized_recompressed_copy_is_warned_about(tmp_path, dreambooth_photos):
    source = dreambooth_photos / "dog" / "00.jpg"
    (tmp_path / "00.jpg").write_bytes(source.read_bytes())
    Image.open(source).resize((260, 260)).save(tmp_path / "00 (1).jpg", quality=50)  # a messenger's copy
    (tmp_path / "01.jpg").write_bytes((dreambooth_photos / "dog" / "01.jpg").read_bytes())
    report = scan(tmp_path, 128).check()
    warned = {p.name: p.warnings for p in report.photos}
    assert warned["00 (1).jpg"] == ["looks like a copy of 00.jpg: resized or saved again? Keep one, or "
                                    "the model learns that photo twice as hard"]
    assert warned["00.jpg"][0].startswith("looks like a copy of 00 (1).jpg") and warned["01.jpg"] == []


def test_different_photos_of_one_subject_are_not_duplicates(dreambooth_photos):
    subjects = sorted(p for p in dreambooth_photos.iterdir() if p.is_dir())
    assert len(subjects) == 10
    for subject in subjects:  # (the closest: two poses of the red cartoon on white, distance 0.11)
        report = scan(subject, 64).check()
        assert not report.skipped and all(p.warnings == [] for p in report.photos), subject.name


# --- What is ignored, skipped, and said ----------------------------------------------------------

def test_system_files_and_folders_are_ignored(tmp_path, dog):
    dog.save(tmp_path / "00.jpg")
    for name in (".DS_Store", "Thumbs.db", "desktop.ini", "._00.jpg", "IMG_0001.AAE"):
        (tmp_path / name).write_bytes(b"\x00\x05\x16\x07 system junk")
    (tmp_path / "photo.jpg").mkdir()
    (tmp_path / "photo.jpg" / "inside.jpg").write_bytes(b"never read")
    (tmp_path / "00.txt").mkdir()  # a folder where a caption could be
    report = scan(tmp_path, 64).check()
    assert used(report) == ["00.jpg"] and report.photos[0].caption is None
    assert report.skipped == [] and report.errors == []
    assert sorted(p.name for p in report.ignored) == sorted(
        [".DS_Store", "Thumbs.db", "desktop.ini", "._00.jpg", "IMG_0001.AAE", "photo.jpg", "00.txt"])
    text = str(report)
    assert text.endswith("\nignoring .DS_Store, ._00.jpg, IMG_0001.AAE, Thumbs.db, desktop.ini (system "
                         "files); 00.txt/, photo.jpg/ (folders: photos inside them are not read)")
    assert list_images(tmp_path) == [tmp_path / "00.jpg"]


def test_unreadable_files_are_all_named_at_once_with_what_to_do(tmp_path, dog, dreambooth_photos):
    jpeg = (dreambooth_photos / "dog" / "01.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 2])  # an interrupted upload
    (tmp_path / "notes.jpg").write_text("this is not a jpeg")
    (tmp_path / "empty.heic").write_bytes(b"")  # a copy that never happened
    (tmp_path / "clip.mov").write_bytes(b"\x00\x00\x00\x18ftypqt  ")
    (tmp_path / "orphan.txt").write_text("a photo of sks dog")
    dog.save(tmp_path / "good.png")
    report = scan(tmp_path, 64).check()
    assert used(report) == ["good.png"]
    why = skipped(report)
    assert why["cut.jpg"].startswith("cannot be decoded (image file is truncated")
    assert "copy it again, or remove it" in why["cut.jpg"]
    assert why["notes.jpg"].startswith("not an image that can be read here")
    assert why["empty.heic"].startswith("is empty (0 bytes): the file is damaged or cut short")
    assert why["orphan.txt"].startswith("a text file, but no photo is named orphan")
    text = str(report)
    assert text.startswith(f"instance folder {tmp_path}, for training at 64 px:\nusing 1 photo:\n")
    assert "skipping 4:\n  cut.jpg: cannot be decoded" in text and "\n  notes.jpg: not an image" in text
    assert text.endswith("\nignoring clip.mov (not photos)")

    (tmp_path / "good.png").unlink()
    with pytest.raises(DreamlabError) as error:
        scan(tmp_path, 64).check()
    message = str(error.value)
    assert message.startswith(f"instance folder {tmp_path} has no images that can be used")
    for name in ("cut.jpg", "empty.heic", "notes.jpg", "orphan.txt"):
        assert f"\n  {name}: " in message
    assert message.endswith("\nIgnored: clip.mov (not photos)")


def test_an_empty_folder_says_so(tmp_path):
    (tmp_path / ".DS_Store").write_bytes(b"junk")
    with pytest.raises(DreamlabError, match=r"has no images \(.*\)\. It holds only: \.DS_Store \(system"):
        scan(tmp_path, 64).check()
    (tmp_path / ".DS_Store").unlink()
    with pytest.raises(DreamlabError, match=f"instance folder {tmp_path} has no images .* It is empty"):
        scan(tmp_path, 64).check()
    with pytest.raises(DreamlabError, match="does not exist"):
        scan(tmp_path / "nope", 64)


# --- Captions ------------------------------------------------------------------------------------

def test_caption_with_a_byte_order_mark_adds_no_junk_tokens(tmp_path, dog, tokenizer):
    text = "a photo of sks dog on a sofa"
    for name, data in (("plain", text.encode()), ("bom", b"\xef\xbb\xbf" + text.encode() + b"\r\n"),
                       ("utf16", text.encode("utf-16"))):  # Notepad's UTF-8 and its "Unicode"
        dog.save(tmp_path / f"{name}.jpg")
        (tmp_path / f"{name}.txt").write_bytes(data)
    ds = DreamBoothDataset(tmp_path, "a photo of sks dog", tokenizer, 64)
    assert ds.instance_prompts == [text] * 3
    plain = tokenize(tokenizer, text)
    assert all(torch.equal(ds.instance_ids[k], plain) for k in range(3))
    assert not torch.equal(plain, tokenize(tokenizer, "\ufeff" + text))  # what the mark did before


def test_a_latin1_caption_is_refused_by_name(tmp_path, dog, tokenizer):
    dog.save(tmp_path / "00.jpg")
    (tmp_path / "00.txt").write_bytes("a photo of sks dog in a café".encode("latin-1"))
    report = scan(tmp_path, 64, tokenizer)
    assert report.errors == ["00.txt is not UTF-8 text (byte 0xe9 at position 27; saved as Latin-1 or "
                             "Windows-1252?): save it again as UTF-8 (Notepad: Save as > Encoding: UTF-8)"]
    assert "to fix before training:\n  00.txt is not UTF-8" in str(report)
    with pytest.raises(DreamlabError, match=f"instance folder {tmp_path}: fix these caption files first:\n"
                                            "  00.txt is not UTF-8"):
        DreamBoothDataset(tmp_path, "a photo of sks dog", tokenizer, 64)
    with pytest.raises(DreamlabError, match=r"caption file .*00\.txt is not UTF-8"):
        caption_of(tmp_path / "00.jpg", "a photo of sks dog")


def test_an_empty_caption_is_an_error_naming_it(tmp_path, dog):
    dog.save(tmp_path / "00.jpg")
    (tmp_path / "00.txt").write_text(" \n ")
    with pytest.raises(DreamlabError, match="00.txt is empty: write a prompt in it, or delete it"):
        scan(tmp_path, 64).check()


def test_a_caption_longer_than_sd_reads_is_warned_about(tmp_path, dog, tokenizer):
    dog.save(tmp_path / "00.jpg")
    (tmp_path / "00.txt").write_text(" ".join(["a photo of sks dog on a red sofa"] * 12) + "\n")  # 108 words
    photo = scan(tmp_path, 64, tokenizer).check().photos[0]
    count = len(tokenizer(photo.caption).input_ids)
    assert count > 77
    assert photo.warnings == [f"its caption 00.txt is {count} tokens long: SD reads 77 and cuts the rest "
                              "off; shorten it"]
    assert scan(tmp_path, 64).photos[0].warnings[0].startswith("its caption 00.txt is about 110 tokens")
    (tmp_path / "00.txt").write_text("a photo of sks dog on a red sofa")
    assert scan(tmp_path, 64, tokenizer).photos[0].warnings == []


# --- The preview and the dataset ---------------------------------------------------------------------

def test_the_preview_is_exactly_what_training_gets(tmp_path, dreambooth_photos, tokenizer):
    for name in ("00.jpg", "01.jpg", "02.jpg"):
        Image.open(dreambooth_photos / "cat2" / name).resize((300, 200)).save(tmp_path / name)
    (tmp_path / "01.txt").write_text("a photo of sks cat on a rug")
    (tmp_path / "broken.jpg").write_text("not a photo")
    for center_crop in (True, False):
        ds = DreamBoothDataset(tmp_path, "a photo of sks cat", tokenizer, 64, center_crop=center_crop, seed=3)
        images, titles = preview(ds.report, 64, center_crop, seed=3, prompt="a photo of sks cat")
        assert len(images) == len(ds.instance_files) == 3
        for k, image in enumerate(images):
            assert torch.equal(to_tensor(image), ds[k]["instance_images"])
    assert titles[0] == "00.jpg\na photo of sks cat"
    assert titles[1] == "01.jpg\na photo of sks cat on a rug"
    assert "broken.jpg" in skipped(ds.report)


def test_open_image_reads_open_files_as_the_lessons_do():
    buffer = io.BytesIO()
    Image.fromarray(np.full((20, 30), 30000, np.uint16)).save(buffer, "PNG")
    image = open_image(io.BytesIO(buffer.getvalue()))
    assert image.mode == "RGB" and image.size == (30, 20) and image.getpixel((0, 0)) == (117, 117, 117)
    with pytest.raises(DreamlabError, match="cannot read image .*not an image"):
        open_image(io.BytesIO(b"text"))
