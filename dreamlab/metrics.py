"""The DreamBooth paper's metrics, on your own pictures: DINO, CLIP-I, CLIP-T, PRES and DIV.

The paper (Ruiz et al., "DreamBooth", CVPR 2023, arXiv 2208.12242, section 4.1) measures with
big pretrained networks that turn a picture into a vector, an *embedding*, so that pictures of
similar things get vectors pointing the same way. Two pictures' similarity is then the cosine
of the angle between their vectors: 1 for the same direction, near 0 for unrelated pictures.

    DINO    subject fidelity: generated pictures of "a photo of sks dog ..." against the real
            photos of the subject, with DINO ViT-S/16 (its CLS token). DINO was trained to tell
            images apart, so it notices what makes this dog this dog, not just "a dog".
    CLIP-I  the same question with CLIP ViT-B/32's image embeddings: more about what the
            picture shows (a dog, brown) than which one it is.
    CLIP-T  prompt fidelity: each picture against its own prompt, with CLIP's text embedding.
    PRES    prior preservation: pictures of the *class* prompt ("a photo of a dog") against the
            subject's photos. Higher means the class collapsed onto the subject ("a dog" has
            become your dog): lower is better. The same formula as DINO, on other pictures.
    DIV     diversity of the pictures of one prompt: higher is more varied (see `div`).

Every metric is one code path for any *embedder* (something that turns pictures, and for CLIP
texts, into unit vectors): DINO and CLIP on a GPU, and offline the toy judge's own features
(dreamlab/judge.py) standing in for DINO, since DINO and CLIP know nothing of the toy world.

    dino, clip = metrics.dino(device="cuda"), metrics.clip(device="cuda")   # from the Hub
    metrics.subject_fidelity(dino, pictures, photos)     # DINO
    metrics.subject_fidelity(clip, pictures, photos)     # CLIP-I
    metrics.paper_metrics(pictures_by_prompt, photos, subject_prompts, "a photo of a dog", dino, clip)
"""

import re
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from PIL import Image

from .data import list_images, open_image, resize_and_crop
from .errors import DreamlabError
from .language import say

DINO = "facebook/dino-vits16"  # the paper's DINO: ViT-S/16, trained without labels
CLIP = "openai/clip-vit-base-patch32"  # the paper's CLIP: ViT-B/32
# transformers 5 calls the PIL/numpy image processors backend="pil"; 4.x calls them the slow
# ones. Either way they need no torchvision (which the fast ones do).
TRANSFORMERS_MAJOR = int(transformers.__version__.split(".")[0])
PIL_PROCESSOR = {"backend": "pil"} if TRANSFORMERS_MAJOR >= 5 else {"use_fast": False}

# What the paper reports, for comparison (arXiv 2208.12242). Table 1: DreamBooth on Stable
# Diffusion, and the real photos of each subject against each other (the best one can hope
# for); 30 subjects, 25 prompts, 4 pictures each. Table 2's PRES and DIV are DreamBooth on
# *Imagen* (the paper measured them on Imagen only), with and without prior preservation.
PAPER = {
    "Stable Diffusion": {"DINO": 0.668, "CLIP-I": 0.803, "CLIP-T": 0.305},
    "real images": {"DINO": 0.774, "CLIP-I": 0.885},  # CLIP-T: no prompt to compare with
    "Imagen, prior preservation": {"PRES": 0.493, "DIV": 0.391},
    "Imagen, no prior preservation": {"PRES": 0.664, "DIV": 0.371},
}
METRICS = ("DINO", "CLIP-I", "CLIP-T", "PRES", "DIV")


# Embedders -------------------------------------------------------------------------------------

class Embedder:
    """Pictures (and, for CLIP, texts) -> one unit-length vector each: a (N, D) float32 tensor
    on the CPU, so that `a @ b.T` holds the cosine similarities of every pair.

    `embed_images` gets square RGB pictures and returns raw vectors; this class batches them,
    centre-crops the pictures to squares (as training does with center_crop) and normalises."""

    def __init__(self, name: str, embed_images: Callable, embed_texts: Callable | None = None,
                 batch_size: int = 32):
        self.name, self.batch_size = name, batch_size
        self.embed_images, self.embed_texts = embed_images, embed_texts

    @torch.no_grad()
    def images(self, images) -> torch.Tensor:
        images = [resize_and_crop(im.convert("RGB"), min(im.size)) for im in as_images(images)]
        rows = [self.embed_images(images[i:i + self.batch_size])
                for i in range(0, len(images), self.batch_size)]
        return F.normalize(torch.cat(rows).float().cpu(), dim=-1)

    @torch.no_grad()
    def texts(self, texts: list[str]) -> torch.Tensor:
        if self.embed_texts is None:
            raise DreamlabError(f"the {self.name} embedder reads pictures only; prompt fidelity "
                                "(CLIP-T) needs a CLIP one: metrics.clip()")
        rows = [self.embed_texts(texts[i:i + self.batch_size]) for i in range(0, len(texts), self.batch_size)]
        return F.normalize(torch.cat(rows).float().cpu(), dim=-1)

    def __repr__(self) -> str:
        return f"Embedder({self.name!r})"


def dino(model: str = DINO, device: str | torch.device = "cpu",
         dtype: torch.dtype = torch.float32) -> Embedder:
    """DINO ViT-S/16 (a hub id or a local folder, as from_pretrained takes): a picture's
    embedding is the CLS token of the last layer, as in the paper."""
    from transformers import AutoImageProcessor, ViTModel

    model = check_model(model, "DINO")
    processor = load(AutoImageProcessor, model, **PIL_PROCESSOR)
    vit = load(ViTModel, model, add_pooling_layer=False, torch_dtype=dtype).to(device).eval()

    def embed_images(images):
        pixels = processor(images=images, return_tensors="pt").pixel_values.to(device, dtype)
        return vit(pixel_values=pixels).last_hidden_state[:, 0]  # the CLS token: the summary

    return Embedder(f"DINO ({Path(model).name})", embed_images)


def clip(model: str = CLIP, device: str | torch.device = "cpu",
         dtype: torch.dtype = torch.float32) -> Embedder:
    """CLIP ViT-B/32 (a hub id or a local folder): picture and text embeddings in one shared
    space, so a picture can be compared with a prompt (CLIP-T) as well as with a photo (CLIP-I)."""
    from transformers import AutoImageProcessor, CLIPModel, CLIPTokenizer

    model = check_model(model, "CLIP")
    processor = load(AutoImageProcessor, model, **PIL_PROCESSOR)
    tokenizer = load(CLIPTokenizer, model)
    net = load(CLIPModel, model, torch_dtype=dtype).to(device).eval()

    # Each tower's pooled output, projected into the shared space: what get_image_features and
    # get_text_features return (written out, as their return type changed in transformers 5).
    def embed_images(images):
        pixels = processor(images=images, return_tensors="pt").pixel_values.to(device, dtype)
        return net.visual_projection(net.vision_model(pixel_values=pixels).pooler_output)

    def embed_texts(texts):
        tokens = tokenizer(texts, padding=True, truncation=True, return_tensors="pt").to(device)
        out = net.text_model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
        return net.text_projection(out.pooler_output)

    return Embedder(f"CLIP ({Path(model).name})", embed_images, embed_texts)


def toy_judge(judge=None) -> Embedder:
    """Offline, the toy judge (dreamlab/judge.py) in DINO's place: its features, the 64 numbers
    its answers are read from (after the convolutions and the average over the picture). Like
    DINO's, they were learned to tell the toy world's pictures apart, the subject included.
    They are never negative (they come out of a ReLU), so even unrelated toy pictures score
    about 0.5, not 0: compare your models with each other, not with the paper's figures."""
    from .judge import load_judge

    judge = judge or load_judge()
    return Embedder("toy judge", lambda images: judge.features(judge.to_pixels(images)))


def check_model(model, what: str) -> str:
    """A local folder, or a hub id that is cached or can be downloaded; otherwise a clear error
    at once (an offline from_pretrained retries for about a minute before it gives up)."""
    from huggingface_hub import constants, try_to_load_from_cache

    from .models import hub_reachable

    model = str(model)
    if Path(model).expanduser().is_dir():
        return str(Path(model).expanduser())
    offline_hint = "Offline, use the toy judge in DINO's place: metrics.toy_judge()."
    if model.startswith((".", "/", "~")) or model.count("/") != 1:
        raise DreamlabError(f"{what} model {model!r}: no such folder, and not a hub id of the form "
                            f"'owner/name' (e.g. {DINO!r} or {CLIP!r}).")
    if isinstance(try_to_load_from_cache(model, "config.json"), str):
        return model
    if constants.HF_HUB_OFFLINE or not hub_reachable():
        raise DreamlabError(f"cannot download the {what} model {model!r}: the Hugging Face hub cannot "
                            f"be reached from here. {offline_hint}")
    return model


def load(cls, model: str, **kwargs):
    try:
        return cls.from_pretrained(model, **kwargs)
    except (OSError, ValueError) as e:  # what from_pretrained raises for missing or broken files
        raise DreamlabError(f"could not load {cls.__name__} from {model!r}: "
                            f"{str(e).splitlines()[0][:300]}") from None


def as_images(images, what: str = "pictures") -> list[Image.Image]:
    """A list of PIL pictures from pictures, image files or a folder of them."""
    if isinstance(images, Image.Image):  # one picture
        images = [images]
    if isinstance(images, (str, Path)):
        images = list_images(images, what)
    images = [open_image(im) if isinstance(im, (str, Path)) else im for im in images]
    if not images:
        raise DreamlabError(f"no {what} given: pass a list of PIL pictures (or files, or a folder)")
    for im in images:
        if not isinstance(im, Image.Image):
            raise DreamlabError(f"{what}: {str(im)[:60]!r} (a {type(im).__name__}) is not a picture; "
                                "pass PIL pictures (as dreamlab.generate returns), files or a folder")
    return images


# The metrics ----------------------------------------------------------------------------------

def mean_similarity(embedder: Embedder, images, others) -> float:
    """The mean cosine similarity over every pair (one of `images`, one of `others`)."""
    return (embedder.images(images) @ embedder.images(others).T).mean().item()


def mean_similarity_within(embedder: Embedder, images) -> float:
    """The mean cosine similarity over every pair of two different pictures of `images`."""
    vectors = embedder.images(images)
    n = len(vectors)
    if n < 2:
        raise DreamlabError(f"{n} picture: DIV and the photos' reference compare pictures with each "
                            "other, so they need at least 2 (draw 2 or more pictures per prompt)")
    similarities = vectors @ vectors.T
    return ((similarities.sum() - similarities.diagonal().sum()) / (n * (n - 1))).item()


def subject_fidelity(embedder: Embedder, generated, instance_photos) -> float:
    """DINO (with a DINO embedder) or CLIP-I (with a CLIP one): how close the generated pictures
    of the subject are to its real photos, the mean similarity over every (picture, photo) pair."""
    return mean_similarity(embedder, generated, instance_photos)


def real_reference(embedder: Embedder, instance_photos) -> float:
    """The photos against each other (pairs of different photos): the paper's "real images" row,
    what subject fidelity looks like when every picture really is the subject (no two photos of
    it look alike either), a reference for the generated pictures' DINO and CLIP-I."""
    return mean_similarity_within(embedder, instance_photos)


def without_identifier(prompt: str, identifier: str | list[str] | None = "sks") -> str:
    """The prompt without the identifier word: "a photo of sks dog on the beach" -> "a photo of
    dog on the beach". None: the prompt as it is."""
    words = [identifier] if isinstance(identifier, str) else list(identifier or [])
    for word in words:
        prompt = re.sub(rf"\b{re.escape(word)}\b", " ", prompt)
    return " ".join(prompt.split())


def prompt_fidelity(clip: Embedder, generated, prompt: str,
                    identifier: str | list[str] | None = "sks") -> float:
    """CLIP-T: the mean similarity of the pictures to their prompt's CLIP text embedding.

    The identifier is taken out of the prompt first. CLIP was not fine-tuned: to it "sks" is
    still its old meaning (mostly a rifle), not your subject, so keeping it would score the
    pictures against a rifle too. What CLIP-T should ask is whether the rest of the prompt (the
    class, the context: "dog on the beach") was followed; whether it is *your* dog is DINO's
    question. (The paper does not say what it did with the identifier; identifier=None keeps it.)"""
    text = clip.texts([without_identifier(prompt, identifier)])
    return (clip.images(generated) @ text.T).mean().item()


def pres(embedder: Embedder, class_prompt_images, instance_photos) -> float:
    """PRES: pictures of the class prompt alone ("a photo of a dog", random dogs) against the
    subject's photos. Higher: the class prior collapsed onto the subject (language drift), so
    lower is better. The paper uses DINO: pass the DINO embedder (offline, the toy judge)."""
    return mean_similarity(embedder, class_prompt_images, instance_photos)


def div(embedder: Embedder, images_by_prompt: dict) -> float:
    """DIV: how varied the pictures of each prompt are, 1 - their mean pairwise similarity,
    averaged over the prompts; 0 when every seed draws the same picture. Higher is better.

    The paper uses LPIPS (a distance between the feature maps of an ImageNet network, tuned to
    human judgements), which needs torchvision's AlexNet or VGG. This substitute uses DINO
    (the same embedder as the other metrics): its single vector per picture sums up *what* it
    shows more than *where*, so poses and positions count less than in LPIPS, and its values are
    on another scale. Use it to compare your models with each other, not with the paper's figures."""
    if not images_by_prompt:
        raise DreamlabError("div: no prompts given; pass {prompt: [its pictures]}")
    values = [1 - mean_similarity_within(embedder, images) for images in images_by_prompt.values()]
    return max(0.0, sum(values) / len(values))  # (identical pictures: rounding gives -1e-7)


def paper_metrics(pictures: dict, instance_photos, subject_prompts: list[str], class_prompt: str,
                  dino: Embedder, clip: Embedder | None = None,
                  identifier: str | list[str] | None = "sks") -> dict[str, float]:
    """The paper's numbers for one model's pictures ({prompt: pictures}, as a lesson draws them):

    DINO and DIV on the pictures of `subject_prompts`, PRES on those of `class_prompt`, all with
    the `dino` embedder (offline, metrics.toy_judge()); with a `clip` embedder, CLIP-I and
    CLIP-T (each picture against its own prompt) too. Returns {"DINO": ..., "PRES": ..., ...}."""
    missing = [p for p in [*subject_prompts, class_prompt] if p not in pictures]
    if missing:
        raise DreamlabError(f"no pictures for {missing[0]!r}; the pictures are for: "
                            f"{', '.join(map(repr, pictures))}")
    photos = as_images(instance_photos, "instance photos")
    subject = [im for p in subject_prompts for im in as_images(pictures[p])]
    results = {"DINO": subject_fidelity(dino, subject, photos)}
    if clip is not None:
        results["CLIP-I"] = subject_fidelity(clip, subject, photos)
        # every prompt has as many pictures: the mean over prompts is the mean over pictures
        per_prompt = [prompt_fidelity(clip, pictures[p], p, identifier) for p in subject_prompts]
        results["CLIP-T"] = sum(per_prompt) / len(per_prompt)
    results["PRES"] = pres(dino, pictures[class_prompt], photos)
    results["DIV"] = div(dino, {p: pictures[p] for p in subject_prompts})
    return results


def table(results: dict[str, dict], paper: bool = True) -> str:
    """One row per model ({name: paper_metrics(...)}) and, with `paper`, the paper's rows below
    them: a text table to print."""
    labels = {"Stable Diffusion": say("paper: Stable Diffusion (Table 1)",
                                      "artigo: Stable Diffusion (Tabela 1)"),
              "real images": say("paper: real photos (Table 1)", "artigo: fotos reais (Tabela 1)"),
              "Imagen, prior preservation": say("paper: Imagen, prior preservation (Table 2)",
                                                "artigo: Imagen, com preservação da classe (Tabela 2)"),
              "Imagen, no prior preservation": say("paper: Imagen, no prior preservation (Table 2)",
                                                   "artigo: Imagen, sem preservação da classe (Tabela 2)")}
    rows = dict(results)
    if paper:
        rows.update({labels[name]: values for name, values in PAPER.items()})
    width = max(len(name) for name in rows) + 2
    lines = [" " * width + "".join(f"{m:>8}" for m in METRICS)]
    for name, values in rows.items():
        lines.append(f"{name:<{width}}" + "".join(f"{values[m]:8.3f}" if m in values else f"{'-':>8}"
                                                  for m in METRICS))
    if paper:
        lines.append(say("(the paper's DIV is LPIPS, ours is 1 - DINO similarity: "
                         "compare DIV between your models only)",
                         "(o DIV do artigo é LPIPS, o nosso é 1 - similaridade DINO: "
                         "compare o DIV só entre os seus modelos)"))
    return "\n".join(lines)
