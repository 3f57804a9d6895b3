"""Cached latents: encode each training picture once, before training, instead of at every step.

The VAE's encoder then never runs during training, and (when the text encoder is not trained)
neither does the text encoder: both can leave the GPU, which frees their memory. The price: each
picture keeps the one random crop it had when cached (no new crops each pass).
"""

import torch
from tqdm.auto import tqdm


@torch.no_grad()
def cache_dataset(dataset, sd, embed_text: bool) -> list[dict]:
    """The dataset's items with pictures replaced by the VAE's latent distribution (its mean and
    log-variance, so training still samples a fresh latent each step, as without the cache), and,
    if `embed_text`, token ids replaced by the text encoder's output."""
    vae, text_encoder, embeddings = sd.vae, sd.text_encoder, {}

    def moments(image):
        return vae.encode(image[None].to(vae.device, vae.dtype)).latent_dist.parameters[0].cpu()

    def embed(ids):  # the same prompt is encoded once, and its rows shared
        key = tuple(ids.tolist())
        if key not in embeddings:
            embeddings[key] = text_encoder(ids[None].to(text_encoder.device))[0][0].cpu()
        return embeddings[key]

    cached = []
    for i in tqdm(range(len(dataset)), desc="caching latents"):
        item, entry = dataset[i], {}
        for who in ("instance", "class"):
            if f"{who}_images" in item:
                entry[f"{who}_moments"] = moments(item[f"{who}_images"])
                if embed_text:
                    entry[f"{who}_embeddings"] = embed(item[f"{who}_ids"])
                else:
                    entry[f"{who}_ids"] = item[f"{who}_ids"]
        cached.append(entry)
    return cached
