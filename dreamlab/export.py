"""Save a fine-tuned model in the formats people share and run, and publish it.

- save_diffusers: the whole pipeline as a diffusers folder (what load_model and from_pretrained read).
- save_single_file: one .safetensors in the original Stable Diffusion layout (AUTOMATIC1111, ComfyUI).
- save_lora / save_kohya_lora: only the LoRA adapters, in diffusers' or in kohya's layout.
- write_model_card / push_to_hub: a README.md with the metadata the Hub reads, and the upload.

Weights are written beside their target and renamed at the end, so an interrupted save never
leaves a half-written model where a complete one was.
"""

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch

from .errors import DreamlabError
from .files import write_safetensors, written_whole
from .models import StableDiffusion

LORA_FILE = "pytorch_lora_weights.safetensors"  # the name load_lora_weights(folder) looks for
ADAPTER = "default"  # the adapter name peft gives when none is given (as the trainer does)


# ----------------------------------------------------------------------------------------
# Writing files safely


def save_diffusers(sd: StableDiffusion, folder, in_place: bool = False) -> Path:
    """Save the whole pipeline in diffusers layout (safetensors), in the modules' precision,
    atomically: the new folder is written beside the old one and swapped in only when complete.
    `in_place` deletes the old folder first, for when the disk has no room for both (Google Drive)
    and the caller can redo the save if it fails (train() does, from its last checkpoint)."""
    if has_lora(sd.unet) or has_lora(sd.text_encoder):  # they would be saved as unloadable extra weights
        raise DreamlabError("this model has LoRA adapters: save them with save_lora() (a few MB, loaded "
                            "onto the base model), or merged into a whole model with save_single_file()")
    out = Path(folder)
    tmp, old = out.with_name(out.name + ".saving"), out.with_name(out.name + ".old")
    with written_whole(tmp, what=f"the model to {out}"):
        if in_place:
            shutil.rmtree(out, ignore_errors=True)
        sd.pipeline().save_pretrained(tmp, safe_serialization=True)
        forget_local_paths(tmp)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    return out


def forget_local_paths(folder: Path) -> None:
    """diffusers and transformers note in each config.json the folder the model was loaded from
    ("_name_or_path": "/home/you/..." or a cache path): not worth publishing, so it goes."""
    for config in Path(folder).rglob("*.json"):
        values = json.loads(config.read_text())
        if isinstance(values, dict) and "_name_or_path" in values and not is_hub_id(values["_name_or_path"]):
            del values["_name_or_path"]
            config.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")


# ----------------------------------------------------------------------------------------
# LoRA adapters


def lora_layers(module: torch.nn.Module) -> dict:
    """The module's LoRA layers (added by peft) by their path, e.g. 'down_blocks.0...attn1.to_q'."""
    from peft.tuners.lora import LoraLayer

    return {name: m for name, m in module.named_modules() if isinstance(m, LoraLayer)}


def has_lora(module: torch.nn.Module) -> bool:
    return bool(lora_layers(module))


def clip_name(key: str) -> str:
    """The text encoder's weight names as SD and older transformers spell them: transformers 5.6
    dropped the 'text_model.' level from CLIPTextModel, which files made elsewhere still have."""
    return key if key.startswith("text_model.") else "text_model." + key


def lora_state(sd: StableDiffusion) -> dict[str, dict[str, torch.Tensor]]:
    """The adapters' weights in peft's naming, per part: {'unet': {...}, 'text_encoder': {...}}
    (the text encoder only when it has adapters)."""
    from peft.utils import get_peft_model_state_dict

    if not has_lora(sd.unet):
        raise DreamlabError("the UNet has no LoRA adapters: this model was fully fine-tuned. "
                            "Save it with save_diffusers() or save_single_file() instead.")
    state = {"unet": get_peft_model_state_dict(sd.unet)}
    if has_lora(sd.text_encoder):
        te = get_peft_model_state_dict(sd.text_encoder)
        state["text_encoder"] = {clip_name(k): v for k, v in te.items()}
    return state


def save_lora(sd: StableDiffusion, folder) -> Path:
    """Save the LoRA adapters in diffusers' format: `folder/pytorch_lora_weights.safetensors`,
    which `pipeline.load_lora_weights(folder)` loads onto the same base model."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers

    state = lora_state(sd)
    # peft's config (rank, alpha, targets) goes into the file too: without it a loader
    # assumes alpha = rank, which scales the adapters wrongly when they differ.
    metadata = {f"{part}_lora_adapter_metadata": getattr(sd, part).peft_config[ADAPTER].to_dict()
                for part in state}
    layers = {f"{part}_lora_layers": convert_state_dict_to_diffusers(s) for part, s in state.items()}
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # Written in a scratch folder inside `folder`, then moved: other files there (the model
    # card, samples) stay, and the old weights stay whole until the new ones are complete.
    with tempfile.TemporaryDirectory(dir=folder, prefix=".saving-") as tmp:
        StableDiffusionPipeline.save_lora_weights(tmp, **layers, **metadata, safe_serialization=True)
        os.replace(Path(tmp) / LORA_FILE, folder / LORA_FILE)
    return folder / LORA_FILE


def kohya_lora(module: torch.nn.Module, prefix: str, rename=lambda name: name) -> dict[str, torch.Tensor]:
    """One module's adapters in kohya's layout: the layer's path with '_' for '.', after a prefix."""
    state = {}
    for name, layer in lora_layers(module).items():
        key = prefix + rename(name).replace(".", "_")
        state[f"{key}.lora_down.weight"] = layer.lora_A[ADAPTER].weight  # peft's A: in -> rank
        state[f"{key}.lora_up.weight"] = layer.lora_B[ADAPTER].weight  # peft's B: rank -> out
        # the output is scaled by alpha / rank; readers take alpha from the file
        state[f"{key}.alpha"] = torch.tensor(float(layer.lora_alpha[ADAPTER]))
    return state


def save_kohya_lora(sd: StableDiffusion, path) -> Path:
    """Save the LoRA adapters as one .safetensors in kohya's layout (lora_unet_..., lora_te_...),
    the LoRA format AUTOMATIC1111 and ComfyUI load beside an SD 1.x checkpoint.

    diffusers' convert_state_dict_to_kohya names the layers the same way, but writes
    alpha = rank whatever the real alpha, and 'lora_te1_' (SDXL's first text encoder) where
    SD 1.x files have 'lora_te_'; so the few lines are written out here instead.
    """
    lora_state(sd)  # raises the clear error when there are no adapters
    state = kohya_lora(sd.unet, "lora_unet_")
    state.update(kohya_lora(sd.text_encoder, "lora_te_", rename=clip_name))
    config = sd.unet.peft_config[ADAPTER]  # what kohya's trainer notes in its files, for tools that show it
    return write_safetensors(state, path, metadata={"ss_network_module": "networks.lora",
                                                    "ss_network_dim": str(config.r),
                                                    "ss_network_alpha": str(config.lora_alpha),
                                                    "ss_base_model_version": "sd_v1"})


def merged_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The module's weights as the same model without adapters has them: each LoRA's low-rank
    update (alpha/rank * B @ A) added into the weight it adapts."""
    deltas = {f"{name}.weight": sum(layer.get_delta_weight(a) for a in layer.active_adapters)
              for name, layer in lora_layers(module).items() if not (layer.merged or layer.disable_adapters)}
    state = {}
    for key, value in module.state_dict().items():
        if ".lora_" in key:  # the adapters themselves: folded into the weights below
            continue
        key = key.replace(".base_layer.", ".")  # peft wraps the adapted layer as `base_layer`
        state[key] = value + deltas[key] if key in deltas else value
    return state


# ----------------------------------------------------------------------------------------
# The original Stable Diffusion (CompVis / LDM) checkpoint layout.
# The tables map diffusers names to SD names, as diffusers' own
# scripts/convert_diffusers_to_original_stable_diffusion.py does, but are built from the
# model's config, so that they fit any number of blocks and layers (the toy models too).

# Inside a ResNet block, in the UNet
UNET_RESNET = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
               ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"),
               ("conv_shortcut", "skip_connection")]
# Inside the VAE's mid-block attention: SD has 1x1 convolutions where diffusers has linear layers
VAE_ATTENTION = [("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."),
                 ("to_out.0.", "proj_out.")]


def unet_table(config) -> list[tuple[str, str]]:
    """(diffusers prefix, SD prefix) for every part of a UNet2DConditionModel.

    SD numbers the UNet's layers in one flat list per side: input_blocks.0 is conv_in, then
    each down block gives one row per layer (a ResNet, `.0`, then its attention, `.1`) and
    a row for its downsampler; each up block gives one row per layer, the last one also
    holding the upsampler (`.1`, or `.2` after an attention).
    """
    if not isinstance(config.layers_per_block, int):
        raise DreamlabError(f"UNet layers_per_block={config.layers_per_block!r}: the SD checkpoint "
                            "layout needs the same number of layers in every block")
    rows = config.layers_per_block + 1  # rows per block, on both sides
    n = len(config.block_out_channels)
    table = [("time_embedding.linear_1.", "time_embed.0."), ("time_embedding.linear_2.", "time_embed.2."),
             ("conv_in.", "input_blocks.0.0."), ("conv_norm_out.", "out.0."), ("conv_out.", "out.2."),
             ("mid_block.resnets.0.", "middle_block.0."), ("mid_block.attentions.0.", "middle_block.1."),
             ("mid_block.resnets.1.", "middle_block.2.")]
    for i in range(n):
        for j in range(rows - 1):
            row = rows * i + j + 1
            table += [(f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{row}.0."),
                      (f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{row}.1.")]
        table.append((f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{rows * (i + 1)}.0.op."))
        for j in range(rows):
            row = rows * i + j
            table += [(f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{row}.0."),
                      (f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{row}.1.")]
        upsampler = 2 if "CrossAttn" in config.up_block_types[i] else 1
        table.append((f"up_blocks.{i}.upsamplers.0.", f"output_blocks.{rows * i + rows - 1}.{upsampler}."))
    return table


def vae_table(config) -> list[tuple[str, str]]:
    """(diffusers prefix, SD prefix) for the parts of an AutoencoderKL whose names differ.
    SD counts the decoder's blocks from the bottom (up.0 is the last one to run)."""
    n = len(config.block_out_channels)
    table = [("encoder.conv_norm_out.", "encoder.norm_out."), ("decoder.conv_norm_out.", "decoder.norm_out.")]
    for side in ("encoder", "decoder"):
        table += [(f"{side}.mid_block.resnets.{k}.", f"{side}.mid.block_{k + 1}.") for k in (0, 1)]
        table.append((f"{side}.mid_block.attentions.0.", f"{side}.mid.attn_1."))
    for i in range(n):
        table.append((f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample."))
        table.append((f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{n - 1 - i}.upsample."))
        for j in range(config.layers_per_block + 1):  # the decoder has one layer more
            table.append((f"encoder.down_blocks.{i}.resnets.{j}.", f"encoder.down.{i}.block.{j}."))
            table.append((f"decoder.up_blocks.{i}.resnets.{j}.", f"decoder.up.{n - 1 - i}.block.{j}."))
    return table


def rename(key: str, table: list[tuple[str, str]], part: str) -> tuple[str, str]:
    """(SD prefix, rest of the name) for a diffusers weight name; names not in the table
    (conv_in, quant_conv, ...) are the same in both layouts."""
    for diffusers, original in table:
        if key.startswith(diffusers):
            return original, key[len(diffusers):]
    if part == "unet" and not key.startswith(("conv_in.", "conv_out.")):
        raise DreamlabError(f"the UNet weight {key!r} has no place in the SD checkpoint layout: "
                            "only SD 1.x-style UNets (UNet2DConditionModel, no extra embeddings) convert")
    return "", key


def unet_to_original(state: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    table, out = unet_table(config), {}
    for key, value in state.items():
        prefix, rest = rename(key, table, "unet")
        if ".resnets." in key:
            rest = replace_all(rest, UNET_RESNET)
        out["model.diffusion_model." + prefix + rest] = value
    return out


def vae_to_original(state: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    table, out = vae_table(config), {}
    for key, value in state.items():
        prefix, rest = rename(key, table, "vae")
        if ".resnets." in key:
            rest = rest.replace("conv_shortcut", "nin_shortcut")
        if ".attentions." in key:
            rest = replace_all(rest, VAE_ATTENTION)
            if rest.endswith("weight") and value.ndim == 2:
                value = value[:, :, None, None]  # linear (out, in) -> 1x1 conv (out, in, 1, 1)
        out["first_stage_model." + prefix + rest] = value
    return out


def text_encoder_to_original(state: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """SD 1.x keeps the transformers CLIP names, under cond_stage_model.transformer."""
    if config.hidden_act != "quick_gelu":  # SD 2's OpenCLIP encoder has another layout
        raise DreamlabError("only SD 1.x text encoders (CLIP, quick_gelu) convert to the SD checkpoint "
                            f"layout; this one uses {config.hidden_act!r}")
    return {"cond_stage_model.transformer." + clip_name(k): v for k, v in state.items()}


def replace_all(name: str, pairs: list[tuple[str, str]]) -> str:
    for old, new in pairs:
        name = name.replace(old, new)
    return name


def original_state_dict(sd: StableDiffusion) -> dict[str, torch.Tensor]:
    """All of the model's weights under the names of an original SD 1.x checkpoint.
    LoRA adapters, if any, are merged into the weights they adapt."""
    return {**unet_to_original(merged_state_dict(sd.unet), sd.unet.config),
            **vae_to_original(sd.vae.state_dict(), sd.vae.config),
            **text_encoder_to_original(merged_state_dict(sd.text_encoder), sd.text_encoder.config)}


def save_single_file(sd: StableDiffusion, path, half: bool = True) -> Path:
    """Save the whole model as one .safetensors in the original Stable Diffusion layout
    (model.diffusion_model.*, first_stage_model.*, cond_stage_model.transformer.*), the
    checkpoint format AUTOMATIC1111 and ComfyUI load. `half` stores float16 weights: half the
    size, and what those tools use on a GPU anyway.

    diffusers reads it back with StableDiffusionPipeline.from_single_file(path, config=folder),
    where `folder` is a diffusers folder of the same architecture (for the scheduler, the
    tokenizer and the parts' configs).
    """
    state = original_state_dict(sd)
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    return write_safetensors(state, path, metadata={"format": "pt"})


# ----------------------------------------------------------------------------------------
# Model card and the Hugging Face Hub

CARD_TEXT = """# {title}

DreamBooth fine-tune of {base} on photos of one subject, bound to the prompt
**`{instance_prompt}`**{how}. Made with dreamlab.{progress}

{samples}## Use it with diffusers

```python
import torch
from diffusers import StableDiffusionPipeline

{load}
image = pipe("{instance_prompt}", num_inference_steps=25).images[0]
```

## Training settings

| setting | value |
|---|---|
{settings}
"""

LOAD = 'pipe = StableDiffusionPipeline.from_pretrained("{model}", torch_dtype=torch.float16).to("cuda")'
LOAD_LORA = LOAD + '\npipe.load_lora_weights("{repo}")'  # the adapters go on top of the base model
# ...and with train_identifier, the word learned for the identifier goes into the text encoder
LOAD_WORD = """
from huggingface_hub import hf_hub_download
from safetensors.torch import load_file
words = load_file(hf_hub_download("{repo}", "identifier_embeddings.safetensors"))
table = pipe.text_encoder.get_input_embeddings().weight.data
for token, vector in words.items():  # e.g. "sks</w>": the vector it learned
    table[pipe.tokenizer.convert_tokens_to_ids(token)] = vector"""


def is_hub_id(name: str) -> bool:
    """'owner/name' and not a local folder: only those may go in the card's base_model."""
    return (bool(re.fullmatch(r"[\w.-]+/[\w.-]+", name)) and not name.startswith(".")
            and not Path(name).exists())


def model_name(model: str) -> str:
    """A base model as a card may name it: its Hub id, or "a local model" (a folder on the
    trainer's machine means nothing to a reader, and may say more about that machine than wanted)."""
    return model if is_hub_id(model) else "a local model"


def public_settings(settings) -> dict:
    """The settings worth showing in a card: local paths (the photos, the output, checkpoints)
    mean nothing to its readers, and may say more about the trainer's machine than wanted."""
    def public(values: dict) -> dict:
        return {k: v for k, v in values.items() if not k.endswith("_dir") and k != "resume_from"}

    values = public(settings.to_dict())
    values["model"] = model_name(values["model"])
    if values.get("more_subjects"):
        values["more_subjects"] = [public(s) if isinstance(s, dict) else s for s in values["more_subjects"]]
    return values


def table_cell(value) -> str:
    return str(value).replace("|", "\\|")  # a bare | would end the Markdown table's cell


def write_model_card(folder, settings, images=None, base_model: str | None = None,
                     prompt: str | None = None, repo_id: str | None = None,
                     steps: tuple[int, int] | None = None) -> Path:
    """Write folder/README.md: YAML metadata the Hub reads (license, base model, tags), how to
    load the model, the training settings, and the sample `images` (saved as samples/N.png),
    made with `prompt` (default: the instance prompt). `base_model` defaults to settings.model;
    `repo_id` is the name the loading example uses; `steps`, (trained, planned), says how far
    training got. Returns the README's path."""
    from huggingface_hub import ModelCard, ModelCardData

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lora = bool(getattr(settings, "lora", False))
    word = bool(getattr(settings, "train_identifier", False))  # saved beside LoRA adapters
    base = base_model or settings.model
    prompt = prompt or settings.instance_prompt
    samples = []
    for i, image in enumerate(images or []):
        (folder / "samples").mkdir(exist_ok=True)
        image.save(folder / "samples" / f"{i}.png")
        samples.append(f"samples/{i}.png")
    data = ModelCardData(
        license="creativeml-openrail-m", library_name="diffusers", pipeline_tag="text-to-image",
        base_model=base if is_hub_id(base) else None,  # the Hub rejects a local path here
        tags=["text-to-image", "diffusers", "dreambooth", "stable-diffusion"] + (["lora"] if lora else []),
        instance_prompt=settings.instance_prompt,
        widget=[{"text": prompt, "output": {"url": s}} for s in samples] or None)
    rows = [f"| {k} | `{table_cell(v)}` |" for k, v in public_settings(settings).items()]
    repo = repo_id or f"your-name/{folder.resolve().name}"
    text = CARD_TEXT.format(
        title=f"DreamBooth{' LoRA' if lora else ''}: {settings.instance_prompt}",
        base=f"[{base}](https://huggingface.co/{base})" if is_hub_id(base) else "a local model",
        instance_prompt=settings.instance_prompt, progress=progress(steps),
        how=" with LoRA adapters (load them on top of the base model)" if lora else "",
        samples="".join(f"![{prompt}]({s})\n" for s in samples) + ("\n" if samples else ""),
        load=(LOAD_LORA.format(model=base if is_hub_id(base) else "path/to/the/base-model", repo=repo)
              + (LOAD_WORD.format(repo=repo) if word else "")
              if lora else LOAD.format(model=repo)),
        settings="\n".join(rows))
    path = folder / "README.md"
    ModelCard(f"---\n{data.to_yaml()}\n---\n\n{text}").save(path)
    return path


def progress(steps: tuple[int, int] | None) -> str:
    if steps is None:
        return ""
    done, planned = steps
    if done < planned:
        return (f"\n\n**Unfinished:** trained for {done} of its {planned} steps (the run was stopped "
                "early; resuming it finishes the training).")
    return f" Trained for {done} steps."


def push_to_hub(folder, repo_id: str, token: str | None = None, private: bool = False) -> str:
    """Upload a saved model folder (weights, README.md, samples) to the Hub as `repo_id`
    (created if needed); returns the repo's URL. Needs a write token: `token`, or the one
    saved by `hf auth login`."""
    from huggingface_hub import create_repo, upload_folder

    folder = Path(folder)
    if not (folder / "README.md").exists():
        raise DreamlabError(f"{folder} has no README.md: save the model and call write_model_card() "
                            "first, so that the Hub page says what the model is")
    try:
        url = create_repo(repo_id, token=token, private=private, exist_ok=True)
        upload_folder(repo_id=repo_id, folder_path=folder, token=token,
                      commit_message="Upload DreamBooth model from dreamlab",
                      # what an interrupted save left, and the run's record (your photos' file names)
                      ignore_patterns=[".saving-*", "*.tmp", "training.json"])
    except Exception as e:  # no network, no or read-only token, a name taken by someone else...
        raise DreamlabError(f"could not upload {folder} to {repo_id!r}: {type(e).__name__}: "
                            f"{str(e).splitlines()[0][:300]}. Check the connection and that the "
                            "token can write (hf auth login).") from None
    return str(url)
