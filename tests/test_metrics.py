"""The paper's metrics (dreamlab/metrics.py): DINO and CLIP loaded as from the Hub (tiny
random-weight models of the same classes, saved to folders), and the toy judge's features
ranking real toy-model pictures as the judge does."""

import sys

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_embedders import build_clip, build_dino
from transformers import (
    CLIPImageProcessor,
    CLIPModel,
    CLIPTokenizer,
    ViTImageProcessor,
    ViTModel,
)

import dreamlab
from dreamlab import metrics, toyworld
from dreamlab.errors import DreamlabError
from dreamlab.identifier import load_identifier
from dreamlab.judge import language_drift, load_judge
from dreamlab.judge import subject_fidelity as judge_subject_fidelity
from dreamlab.language import set_language
from dreamlab.toyworld import Scene, render

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def dino_folder(tmp_path_factory):
    return build_dino(tmp_path_factory.mktemp("tiny-dino"))


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    return build_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="module")
def dino(dino_folder):
    return metrics.dino(str(dino_folder))


@pytest.fixture(scope="module")
def clip(clip_folder):
    return metrics.clip(str(clip_folder))


def scenes(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [render(toyworld.random_scene(rng)) for _ in range(n)]


# The embedders -----------------------------------------------------------------------------------

def test_embeddings_are_unit_vectors_one_row_per_picture(dino, clip):
    pictures = scenes(5)
    for embedder, size in ((dino, 32), (clip, 16)):
        vectors = embedder.images(pictures)
        assert vectors.shape == (5, size) and vectors.dtype == torch.float32
        assert torch.allclose(vectors.norm(dim=1), torch.ones(5), atol=1e-5)
        assert not torch.allclose(vectors[0], vectors[1])  # different pictures, different vectors
        # batching changes nothing
        embedder.batch_size = 2
        assert torch.allclose(embedder.images(pictures), vectors, atol=1e-5)
        embedder.batch_size = 32
    texts = clip.texts(["a photo of a dog", "a photo of a red box on snow"])
    assert texts.shape == (2, 16) and torch.allclose(texts.norm(dim=1), torch.ones(2), atol=1e-5)
    assert "torchvision" not in sys.modules  # the PIL processors: no torchvision anywhere


def test_dino_is_the_cls_token(dino, dino_folder):
    pictures = scenes(3)
    vit = ViTModel.from_pretrained(dino_folder, add_pooling_layer=False).eval()
    processor = ViTImageProcessor.from_pretrained(dino_folder)
    with torch.no_grad():
        hidden = vit(**processor(images=pictures, return_tensors="pt")).last_hidden_state
    expected = torch.nn.functional.normalize(hidden[:, 0], dim=-1)
    assert torch.allclose(dino.images(pictures), expected, atol=1e-5)
    assert not torch.allclose(dino.images(pictures),
                              torch.nn.functional.normalize(hidden[:, 1], dim=-1), atol=1e-3)


def test_clip_matches_the_library_features(clip, clip_folder):
    """Our written-out projections are what CLIPModel's own feature functions return."""
    pictures, texts = scenes(3), ["a photo of a ball", "a photo of a red striped box on snow"]
    model = CLIPModel.from_pretrained(clip_folder).eval()
    processor = CLIPImageProcessor.from_pretrained(clip_folder)
    tokens = CLIPTokenizer.from_pretrained(clip_folder)(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        image_features = model.get_image_features(**processor(images=pictures, return_tensors="pt"))
        text_features = model.get_text_features(**tokens)
    # transformers 5 returns an output whose pooler_output is the projection; 4.x the tensor
    image_features = getattr(image_features, "pooler_output", image_features)
    text_features = getattr(text_features, "pooler_output", text_features)
    normalize = torch.nn.functional.normalize
    assert torch.allclose(clip.images(pictures), normalize(image_features, dim=-1), atol=1e-5)
    assert torch.allclose(clip.texts(texts), normalize(text_features, dim=-1), atol=1e-5)


def test_photos_are_centre_cropped_to_squares(dino):
    square = render(Scene("ball", "red", "snow", "striped", 0.5, (0.5, 0.5), seed=3))
    wide = Image.new("RGB", (96, 64), "black")
    wide.paste(square, (16, 0))  # black bands left and right, cut away by the crop
    assert torch.allclose(dino.images([wide]), dino.images([square]), atol=1e-5)
    assert metrics.subject_fidelity(dino, [wide.convert("RGBA")], [square]) == pytest.approx(1.0, abs=1e-5)


def test_half_precision_weights(dino_folder):
    """On a GPU the lessons load in float16: the pixels must follow the weights' dtype."""
    half = metrics.dino(str(dino_folder), dtype=torch.bfloat16)  # (bfloat16: CPUs run it)
    full = metrics.dino(str(dino_folder))
    pictures = scenes(2)
    vectors = half.images(pictures)
    assert vectors.dtype == torch.float32
    assert torch.allclose(vectors, full.images(pictures), atol=0.05)


def test_pictures_from_files_and_folders(dino, tmp_path):
    pictures = scenes(3)
    for i, picture in enumerate(pictures):
        picture.save(tmp_path / f"{i}.png")
    from_folder = dino.images(tmp_path)
    assert torch.allclose(from_folder, dino.images(pictures), atol=1e-5)
    assert torch.allclose(dino.images([tmp_path / "1.png"]), from_folder[1:2], atol=1e-5)
    assert torch.allclose(dino.images(pictures[2]), from_folder[2:], atol=1e-5)  # one picture


# The metrics ------------------------------------------------------------------------------------

def test_identical_pictures_score_one_and_others_less(dino, clip):
    photo, others = scenes(1, seed=1), scenes(4, seed=2)
    for embedder in (dino, clip):
        assert metrics.subject_fidelity(embedder, photo, photo) == pytest.approx(1.0, abs=1e-5)
        assert metrics.subject_fidelity(embedder, photo * 3, photo * 2) == pytest.approx(1.0, abs=1e-5)
        assert metrics.subject_fidelity(embedder, others, photo) < 0.999
        # the mean over every pair: the mean of the similarity matrix
        a, b = embedder.images(others), embedder.images(photo + others[:2])
        assert metrics.subject_fidelity(embedder, others, photo + others[:2]) == pytest.approx(
            (a @ b.T).mean().item(), abs=1e-6)


def test_real_reference_leaves_out_each_photo_against_itself(dino):
    photo, others = scenes(1, seed=1), scenes(3, seed=2)
    assert metrics.real_reference(dino, photo * 2) == pytest.approx(1.0, abs=1e-5)
    vectors = dino.images(others)
    pairs = [(vectors[i] @ vectors[j]).item() for i in range(3) for j in range(3) if i != j]
    assert metrics.real_reference(dino, others) == pytest.approx(np.mean(pairs), abs=1e-6)
    assert metrics.real_reference(dino, others) < metrics.subject_fidelity(dino, others, others)
    with pytest.raises(DreamlabError, match="at least 2"):
        metrics.real_reference(dino, photo)


def test_div(dino):
    same, varied = scenes(1) * 4, scenes(4)
    assert metrics.div(dino, {"a": same}) == pytest.approx(0.0, abs=1e-5)  # every seed, one picture
    assert metrics.div(dino, {"b": varied}) > 0.001
    # the mean over prompts
    assert metrics.div(dino, {"a": same, "b": varied}) == pytest.approx(metrics.div(dino, {"b": varied}) / 2)
    with pytest.raises(DreamlabError, match="no prompts"):
        metrics.div(dino, {})
    with pytest.raises(DreamlabError, match="at least 2"):
        metrics.div(dino, {"a": same[:1]})


def test_pres_is_class_pictures_against_the_photos(dino):
    photos, class_pictures = scenes(2, seed=1), scenes(4, seed=2)
    assert metrics.pres(dino, class_pictures, photos) == pytest.approx(
        metrics.subject_fidelity(dino, class_pictures, photos))
    assert metrics.pres(dino, photos[:1] * 3, photos[:1]) == pytest.approx(1.0, abs=1e-5)  # full collapse


def test_clip_t_leaves_the_identifier_out(clip):
    assert metrics.without_identifier("a photo of sks dog on the beach") == "a photo of dog on the beach"
    assert metrics.without_identifier("a sks dog, sks!", ["sks"]) == "a dog, !"
    assert metrics.without_identifier("a photo of sksdog", "sks") == "a photo of sksdog"  # words only
    assert metrics.without_identifier("a photo of sks dog", None) == "a photo of sks dog"
    pictures = scenes(3)
    with_sks = metrics.prompt_fidelity(clip, pictures, "a photo of sks ball on snow")
    assert with_sks == pytest.approx(metrics.prompt_fidelity(clip, pictures, "a photo of ball on snow", None))
    kept = metrics.prompt_fidelity(clip, pictures, "a photo of sks ball on snow", identifier=None)
    assert with_sks != pytest.approx(kept)
    text = clip.texts(["a photo of ball on snow"])
    assert with_sks == pytest.approx((clip.images(pictures) @ text.T).mean().item(), abs=1e-6)
    assert -1 <= with_sks <= 1


def test_paper_metrics_and_table(dino, clip):
    subject_prompts = ["a photo of sks ball on snow", "a photo of sks ball on grass"]
    pictures = {subject_prompts[0]: scenes(3, seed=1), subject_prompts[1]: scenes(3, seed=2),
                "a photo of a ball": scenes(3, seed=3)}
    photos = toyworld.subject_photos(3)
    both = metrics.paper_metrics(pictures, photos, subject_prompts, "a photo of a ball", dino, clip)
    assert list(both) == ["DINO", "CLIP-I", "CLIP-T", "PRES", "DIV"]
    subject = pictures[subject_prompts[0]] + pictures[subject_prompts[1]]
    assert both["DINO"] == pytest.approx(metrics.subject_fidelity(dino, subject, photos))
    assert both["CLIP-I"] == pytest.approx(metrics.subject_fidelity(clip, subject, photos))
    assert both["CLIP-T"] == pytest.approx(np.mean([metrics.prompt_fidelity(clip, pictures[p], p)
                                                    for p in subject_prompts]))
    assert both["PRES"] == pytest.approx(metrics.pres(dino, pictures["a photo of a ball"], photos))
    assert both["DIV"] == pytest.approx(metrics.div(dino, {p: pictures[p] for p in subject_prompts}))
    offline = metrics.paper_metrics(pictures, photos, subject_prompts, "a photo of a ball", dino)
    assert list(offline) == ["DINO", "PRES", "DIV"] and offline["DINO"] == pytest.approx(both["DINO"])

    text = metrics.table({"base": offline, "fine-tuned": both})
    lines = text.splitlines()
    assert lines[0].split() == list(metrics.METRICS)
    assert lines[1].split() == ["base", f"{offline['DINO']:.3f}", "-", "-", f"{offline['PRES']:.3f}",
                                f"{offline['DIV']:.3f}"]
    assert "0.668" in text and "0.803" in text and "0.305" in text and "0.774" in text and "0.885" in text
    assert "0.493" in text and "0.664" in text and "LPIPS" in text
    assert "0.668" not in metrics.table({"base": offline}, paper=False)
    set_language("pt-BR")
    try:
        text = metrics.table({"base": offline})
        assert "artigo: fotos reais (Tabela 1)" in text and "sem preservação da classe" in text
    finally:
        set_language("en")


def test_paper_figures():
    assert metrics.PAPER["Stable Diffusion"] == {"DINO": 0.668, "CLIP-I": 0.803, "CLIP-T": 0.305}
    assert metrics.PAPER["real images"] == {"DINO": 0.774, "CLIP-I": 0.885}
    # collapse of the prior: higher PRES without prior preservation (Imagen, Table 2)
    paper = metrics.PAPER
    assert paper["Imagen, no prior preservation"]["PRES"] > paper["Imagen, prior preservation"]["PRES"]


# Bad input: one clear line ------------------------------------------------------------------------

def test_bad_input_says_what_to_do(dino, tmp_path, monkeypatch):
    with pytest.raises(DreamlabError, match="no pictures given"):
        dino.images([])
    with pytest.raises(DreamlabError, match=r"'3' \(a int\) is not a picture"):
        metrics.subject_fidelity(dino, [3], scenes(1))
    with pytest.raises(DreamlabError, match="reads pictures only.*metrics.clip"):
        metrics.prompt_fidelity(dino, scenes(1), "a photo of sks dog")
    with pytest.raises(DreamlabError, match="no such folder, and not a hub id"):
        metrics.dino(str(tmp_path / "nothing-here"))
    with pytest.raises(DreamlabError, match="not a hub id"):
        metrics.clip("clip-vit-base-patch32")
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DreamlabError, match="cannot be reached.*toy_judge"):
        metrics.dino("nobody-at-all/no-such-model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DreamlabError, match="could not load"):
        metrics.dino(str(tmp_path / "empty"))
    with pytest.raises(DreamlabError, match="no pictures for 'a photo of a ball'"):
        metrics.paper_metrics({"a photo of sks ball": scenes(2)}, scenes(2), ["a photo of sks ball"],
                              "a photo of a ball", dino)


# Offline: the toy judge's features rank as the judge does ------------------------------------------

TRAINED = "a photo of sks ball on grass"  # the caption of the photos taken on grass
CLASS = "a photo of a ball"
N = 6  # pictures a prompt: seeds 0..5


@pytest.fixture(scope="module")
def toy_pictures():
    """Real pictures of the shipped toy model, before and after DreamBooth (lesson 0's LoRA,
    trained with prior preservation, and its word "sks"): a few seconds on one CPU thread."""
    pipe = dreamlab.load_model(dreamlab.offline_model()).pipeline()

    def draw(prompt):
        return dreamlab.generate(pipe, [prompt] * N, list(range(N)), resolution=64,
                                 num_inference_steps=15, batch_size=N)

    base = {TRAINED: draw(TRAINED)}
    pipe.load_lora_weights(str(dreamlab.ASSETS / "striped-ball-lora"))
    load_identifier(pipe, dreamlab.ASSETS / "striped-ball-lora")
    return base, {TRAINED: draw(TRAINED), CLASS: draw(CLASS)}


@pytest.fixture(scope="module")
def judge():
    return load_judge()


@pytest.fixture(scope="module")
def photos():
    """The striped ball's photos, as lesson 3 trains on them."""
    return metrics.as_images(dreamlab.ASSETS / "instance" / toyworld.SUBJECT_NAME)


def test_the_judge_features_rank_subject_fidelity_as_the_judge(toy_pictures, judge, photos):
    base, tuned = toy_pictures
    embedder = metrics.toy_judge(judge)
    # the judge: the base model never draws our subject, the fine-tuned one mostly does
    # (measured: 0 and 1.0)
    judged = {name: judge_subject_fidelity(judge, pictures[TRAINED])
              for name, pictures in (("base", base), ("tuned", tuned))}
    assert judged["base"] <= 0.2 and judged["tuned"] >= 0.8, judged
    # the same order in embedding similarity, by a clear margin (measured: 0.57 and 0.90)
    fidelity = {name: metrics.subject_fidelity(embedder, pictures[TRAINED], photos)
                for name, pictures in (("base", base), ("tuned", tuned))}
    assert fidelity["tuned"] >= fidelity["base"] + 0.15, fidelity
    # the photos against each other, the paper's "real images" row: the training prompt's
    # pictures come as close to the photos as the photos to each other (measured: 0.90)
    assert metrics.real_reference(embedder, photos) >= fidelity["base"] + 0.15


def test_the_judge_features_rank_pres_as_the_judge(toy_pictures, judge, photos):
    """A model trained without prior preservation turns about a third of its "a ball" pictures
    into our subject (benchmarks/toy_dreambooth.py: 0.31); the prior-preserved one none. Here the
    "no prior" class pictures are the prior-preserved model's with a third of them replaced by
    its subject pictures, same seeds: collapse, as the judge counts it, must raise PRES."""
    _, tuned = toy_pictures
    embedder = metrics.toy_judge(judge)
    prior = tuned[CLASS]
    no_prior = prior[:N - N // 3] + tuned[TRAINED][N - N // 3:]
    assert language_drift(judge, prior) <= 0.2
    assert language_drift(judge, no_prior) >= language_drift(judge, prior) + 0.15
    with_prior, without = metrics.pres(embedder, prior, photos), metrics.pres(embedder, no_prior, photos)
    assert without >= with_prior + 0.05, (with_prior, without)  # (measured 0.57 and 0.67)
    # full collapse ("a ball" = our subject) is the far end
    assert metrics.pres(embedder, tuned[TRAINED], photos) >= without + 0.05


def test_the_judge_features_on_renders(judge):
    """The same ranking on the toy world's own drawings, and DIV: the subject's photos in new
    contexts are closer to its photos than ordinary balls are; varied scenes are more diverse
    than one scene drawn again and again."""
    embedder = metrics.toy_judge(judge)
    photos = toyworld.subject_photos(5)
    new_contexts = toyworld.subject_photos(8, ("snow", "night sky"), seed=5)
    balls = [render(Scene("ball", colour, context, "plain", 0.5, (0.5, 0.5), seed=i))
             for i, (colour, context) in enumerate(zip(toyworld.COLOURS, ["snow", "night sky"] * 3))]
    assert metrics.subject_fidelity(embedder, new_contexts, photos) >= \
        metrics.subject_fidelity(embedder, balls, photos) + 0.1
    assert metrics.div(embedder, {"varied": scenes(8)}) > metrics.div(embedder, {"one": photos[:1] * 8}) + 0.1
