"""Generate images with fixed seeds, and lay them out in grids."""

import torch
from PIL import Image, ImageDraw


@torch.no_grad()
def generate(pipeline, prompts: list[str], seeds: list[int], resolution: int = 512,
             num_inference_steps: int = 25, guidance_scale: float = 7.5,
             batch_size: int = 4) -> list[Image.Image]:
    """One image per (prompt, seed) pair. The same seed gives the same starting noise, so two
    models compared with the same seeds differ only by what they learned."""
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds: give one seed per prompt")
    device = pipeline.unet.device
    images = []
    for i in range(0, len(prompts), batch_size):
        generators = [torch.Generator(device).manual_seed(s) for s in seeds[i:i + batch_size]]
        images += pipeline(prompts[i:i + batch_size], height=resolution, width=resolution,
                           num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                           generator=generators).images
    return images


def image_grid(images: list[Image.Image], cols: int, labels: list[str] | None = None,
               size: int | None = None) -> Image.Image:
    """Paste images into a grid, `cols` per row, each scaled to `size` px, with optional labels
    written under each image."""
    size = size or images[0].width
    label_h = 14 if labels else 0
    rows = -(-len(images) // cols)
    grid = Image.new("RGB", (cols * size, rows * (size + label_h)), "white")
    draw = ImageDraw.Draw(grid)
    for i, image in enumerate(images):
        x, y = (i % cols) * size, (i // cols) * (size + label_h)
        grid.paste(image.convert("RGB").resize((size, size), Image.Resampling.NEAREST
                                               if image.width < size else Image.Resampling.LANCZOS), (x, y))
        if labels:
            draw.text((x + 2, y + size + 1), labels[i][: size // 6], fill="black")
    return grid
