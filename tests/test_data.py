import pytest
import torch
from PIL import Image

from dreamlab import DreamBoothDataset, DreamlabError, collate, generate_class_images, list_images
from dreamlab.data import open_image, set_epoch, to_tensor, tokenize


def test_instance_dataset_on_real_photos(dreambooth_photos, sd):
    ds = DreamBoothDataset(dreambooth_photos / "backpack", "a photo of sks backpack", sd.tokenizer,
                           resolution=64)
    assert len(ds) == len(list_images(dreambooth_photos / "backpack")) == 6
    item = ds[0]
    assert item["instance_images"].shape == (3, 64, 64)
    assert item["instance_images"].dtype == torch.float32
    assert -1.0 <= item["instance_images"].min() < -0.5 and 0.5 < item["instance_images"].max() <= 1.0
    assert item["instance_ids"].tolist()[:5] == [49406, 320, 1125, 539, 48136]


def test_dataset_with_class_images_and_collate(dreambooth_photos, sd, class_dir):
    ds = DreamBoothDataset(dreambooth_photos / "dog", "a photo of sks dog", sd.tokenizer, 64,
                           class_dir=class_dir, class_prompt="a photo of a dog")
    assert len(ds) == max(5, 4)
    batch = collate([ds[0], ds[1]])
    assert batch["pixel_values"].shape == (4, 3, 64, 64)
    assert batch["input_ids"].shape == (4, 77)
    assert batch["num_instance"] == 2
    assert batch["input_ids"][0, 4] == 48136 and batch["input_ids"][2, 4] != 48136  # sks vs a


def test_random_crops_change_each_pass_and_replay_exactly(tmp_path, sd):
    photo = Image.new("RGB", (300, 100))
    photo.paste((255, 0, 0), (0, 0, 150, 100))
    photo.save(tmp_path / "wide.png")
    ds = DreamBoothDataset(tmp_path, "x", sd.tokenizer, 64, center_crop=False, seed=1)
    first = ds[0]["instance_images"]
    assert torch.equal(first, ds[0]["instance_images"])  # the same pass: the same crop (for resuming)
    crops = set()
    for epoch in range(10):
        set_epoch(ds, epoch)
        crops.add(ds[0]["instance_images"].numpy().tobytes())
    assert len(crops) > 1
    centred = DreamBoothDataset(tmp_path, "x", sd.tokenizer, 64, center_crop=True)
    before = centred[0]["instance_images"]
    set_epoch(centred, 3)
    assert torch.equal(centred[0]["instance_images"], before)


def test_a_caption_file_replaces_the_instance_prompt(tmp_path, sd):
    for name in ("a", "b"):
        Image.new("RGB", (64, 64), "red").save(tmp_path / f"{name}.png")
    (tmp_path / "b.txt").write_text("a photo of sks dog on a sofa\n")
    ds = DreamBoothDataset(tmp_path, "a photo of sks dog", sd.tokenizer, 64)
    assert ds.instance_prompts == ["a photo of sks dog", "a photo of sks dog on a sofa"]
    assert torch.equal(ds[1]["instance_ids"], tokenize(sd.tokenizer, "a photo of sks dog on a sofa"))
    (tmp_path / "b.txt").write_text("  ")
    with pytest.raises(DreamlabError, match="b.txt is empty"):
        DreamBoothDataset(tmp_path, "a photo of sks dog", sd.tokenizer, 64)


def test_exif_rotation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), "white")
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view"
    image.save(tmp_path / "phone.jpg", exif=exif)
    assert open_image(tmp_path / "phone.jpg").size == (20, 40)


def test_grayscale_and_rgba_become_rgb(tmp_path):
    Image.new("L", (32, 32), 128).save(tmp_path / "g.png")
    Image.new("RGBA", (32, 32), (255, 0, 0, 128)).save(tmp_path / "a.png")
    for name in ("g.png", "a.png"):
        assert to_tensor(open_image(tmp_path / name)).shape == (3, 32, 32)


def test_empty_folder_is_named(tmp_path, sd):
    with pytest.raises(DreamlabError, match=f"{tmp_path}.*empty"):
        DreamBoothDataset(tmp_path, "a photo of sks dog", sd.tokenizer)


def test_folder_without_images_is_named(tmp_path, sd):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DreamlabError, match=f"(?s){tmp_path} has no images.*notes.txt: a text file"):
        DreamBoothDataset(tmp_path, "a photo of sks dog", sd.tokenizer)
    with pytest.raises(DreamlabError, match=f"{tmp_path} has no images.*It holds: notes.txt"):
        list_images(tmp_path)


def test_missing_folder_is_named(tmp_path, sd):
    with pytest.raises(DreamlabError, match="does not exist"):
        DreamBoothDataset(tmp_path / "nope", "a photo of sks dog", sd.tokenizer)


def test_a_file_that_is_not_an_image_is_skipped_and_named(tmp_path, sd, dreambooth_photos):
    (tmp_path / "00.jpg").write_bytes((dreambooth_photos / "dog" / "00.jpg").read_bytes())
    (tmp_path / "01.jpg").write_text("this is not a jpeg")
    ds = DreamBoothDataset(tmp_path, "a photo of sks dog", sd.tokenizer, 64)  # the other photo is used
    assert ds.instance_files == [tmp_path / "00.jpg"] and len(ds) == 1
    assert [(p.name, why.split(" (")[0]) for p, why in ds.report.skipped] == [
        ("01.jpg", "not an image that can be read here")]
    (tmp_path / "00.jpg").unlink()
    with pytest.raises(DreamlabError, match=r"(?s)has no images that can be used.*01\.jpg: not an image"):
        DreamBoothDataset(tmp_path, "a photo of sks dog", sd.tokenizer)
    with pytest.raises(DreamlabError, match=r"cannot read image .*01\.jpg"):
        open_image(tmp_path / "01.jpg")


def test_bad_class_images_are_named_before_training(tmp_path, sd, dreambooth_photos):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG broken")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(DreamlabError, match="2 image.*cannot be read:\n  broken.png: .*\n  empty.png: "):
        DreamBoothDataset(dreambooth_photos / "dog", "a photo of sks dog", sd.tokenizer,
                          class_dir=tmp_path, class_prompt="a photo of a dog")


def test_class_images_are_generated_then_reused_then_topped_up(tmp_path, sd):
    pipe, folder = sd.pipeline(), tmp_path / "class"
    first = generate_class_images(pipe, folder, "a photo of a dog", 3, batch_size=2,
                                  resolution=64, num_inference_steps=2)
    assert [p.name for p in first] == ["class-00000.png", "class-00001.png", "class-00002.png"]
    assert Image.open(first[0]).size == (64, 64)
    stamps = [p.stat().st_mtime_ns for p in first]
    again = generate_class_images(pipe, folder, "a photo of a dog", 3, resolution=64,
                                  num_inference_steps=2)
    assert again == first and [p.stat().st_mtime_ns for p in again] == stamps  # reused
    more = generate_class_images(pipe, folder, "a photo of a dog", 5, resolution=64,
                                 num_inference_steps=2)
    assert len(more) == 5 and [p.stat().st_mtime_ns for p in more[:3]] == stamps
    assert not list(folder.glob("*.part"))


def test_class_images_of_another_prompt_are_not_reused(tmp_path, sd):
    folder = tmp_path / "class"
    generate_class_images(sd.pipeline(), folder, "a photo of a dog", 1, resolution=64,
                          num_inference_steps=2)
    with pytest.raises(DreamlabError, match=f"{folder} holds images made for 'a photo of a dog'"):
        generate_class_images(sd.pipeline(), folder, "a photo of a cat", 1, resolution=64,
                              num_inference_steps=2)
