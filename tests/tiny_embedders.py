"""Tiny random-weight stand-ins for the paper's two embedders, laid out as their Hub repos
(facebook/dino-vits16, openai/clip-vit-base-patch32): the metric tests load them from a folder,
the Colab rehearsal from its Hub cache under the real ids."""

import json
import shutil
from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer, ViTConfig, ViTModel

from dreamlab.offline import TOKENIZER

TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)


def write_preprocessor(folder: Path, **config) -> None:
    """preprocessor_config.json in the old format the two Hub repos still have (2021's
    "feature extractors"; their sizes here 32 px, not 224)."""
    (folder / "preprocessor_config.json").write_text(json.dumps(
        {"do_normalize": True, "do_resize": True, "size": 32, **config}))


def build_dino(folder: Path) -> Path:
    """A folder laid out as facebook/dino-vits16: config, weights, preprocessor."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    ViTModel(ViTConfig(**TINY, image_size=32, patch_size=8), add_pooling_layer=False).save_pretrained(folder)
    write_preprocessor(folder, feature_extractor_type="ViTFeatureExtractor", resample=2,
                       image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    return folder


def build_clip(folder: Path) -> Path:
    """A folder laid out as openai/clip-vit-base-patch32: model, image processor, tokenizer."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    tokenizer = CLIPTokenizer.from_pretrained(TOKENIZER)
    config = CLIPConfig(text_config=dict(**TINY, vocab_size=len(tokenizer), max_position_embeddings=77),
                        vision_config=dict(**TINY, image_size=32, patch_size=8), projection_dim=16)
    CLIPModel(config).save_pretrained(folder)
    write_preprocessor(folder, feature_extractor_type="CLIPFeatureExtractor", resample=3, crop_size=32,
                       do_center_crop=True, image_mean=[0.48145466, 0.4578275, 0.40821073],
                       image_std=[0.26862954, 0.26130258, 0.27577711])
    for f in TOKENIZER.iterdir():
        shutil.copy(f, folder / f.name)
    return folder
