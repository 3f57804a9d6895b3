"""How much GPU memory does a DreamBooth step need? Estimated without a GPU, then settings chosen to fit.

PyTorch's `meta` device makes tensors that have a shape and a dtype but no data. SD 1.5's real
UNet, VAE and text encoder are built there in a blink, and one training step runs on them in
about a second: nothing is computed, but every tensor a GPU would hold is made, so counting the
bytes of the live ones gives the step's peak memory. A step's memory has four parts:

    weights      every parameter on the GPU (trained ones in float32, frozen ones in half precision)
    gradients    one float32 number (4 bytes) per trained parameter
    optimizer    AdamW keeps two float32 numbers per trained parameter (8 bytes); 8-bit AdamW 2 bytes
    activations  what the forward pass keeps for the backward pass, and the backward's temporaries

    from dreamlab import memory
    memory.estimate(mixed_precision="fp16", gradient_checkpointing=True)  # GiB per part
    memory.plan(14.75)                          # the best settings for a 14.75 GiB GPU (Colab's T4)
    print(memory.format_table(memory.table()))  # SD 1.5 at 512 px, setting by setting

The estimate is what `torch.cuda.max_memory_allocated()` would report. Not counted: the CUDA
context (0.3 to 0.5 GiB that nvidia-smi shows and PyTorch does not), the caching allocator's
fragmentation (reserved minus allocated, often 5 to 10 %), cuBLAS/cuDNN workspaces, and
bitsandbytes' small per-block statistics; plan() keeps a margin for them.
"""

import contextlib
import functools
import json
import weakref
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map_only, tree_unflatten
from torch.utils.weak import WeakIdKeyDictionary
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from .errors import DreamlabError
from .models import StableDiffusion
from .offline import TOKENIZER
from .optimizer import BUCKET_BYTES, GradientBuckets
from .settings import SD15, Settings
from .trainable import frozen_dtype, make_trainable

GiB = 2**30
# stable-diffusion-v1-5's unet/, vae/ and text_encoder/config.json, less their bookkeeping (class, versions)
SD15_CONFIGS = {
    "unet": dict(  # 859,520,964 parameters
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=[320, 640, 1280, 1280], attention_head_dim=8, cross_attention_dim=768,
        down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
        up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3, act_fn="silu",
        norm_num_groups=32, norm_eps=1e-5, center_input_sample=False, downsample_padding=1,
        flip_sin_to_cos=True, freq_shift=0, mid_block_scale_factor=1),
    "vae": dict(  # 83,653,863 parameters
        sample_size=512, in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
        block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4, act_fn="silu", norm_num_groups=32),
    "text_encoder": dict(  # CLIP ViT-L/14's text half: 123,060,480 parameters
        vocab_size=49408, max_position_embeddings=77, hidden_size=768, intermediate_size=3072,
        num_hidden_layers=12, num_attention_heads=12, projection_dim=768, hidden_act="quick_gelu",
        layer_norm_eps=1e-5, attention_dropout=0.0, dropout=0.0, initializer_range=0.02,
        initializer_factor=1.0, bos_token_id=0, eos_token_id=2, pad_token_id=1),
}

# The options estimate() takes, named as in Settings; every memory saver is off unless asked for
# (Settings caches latents by default), so that an estimate names all it turns on.
DEFAULTS = dict(model=SD15, resolution=Settings.resolution, train_batch_size=Settings.train_batch_size,
                prior_preservation=Settings.prior_preservation,
                train_text_encoder=Settings.train_text_encoder, train_identifier=Settings.train_identifier,
                mixed_precision=Settings.mixed_precision, gradient_checkpointing=False,
                use_8bit_adam=False, cache_latents=False, lora=False, lora_rank=4, attention="sdpa",
                step_in_backward=False)


def model_configs(model: str = SD15) -> dict:
    """The three config dicts of SD 1.5, or those of a local model folder in diffusers layout."""
    if model in (SD15, "runwayml/stable-diffusion-v1-5"):
        return SD15_CONFIGS
    folder = Path(model).expanduser()
    if not (folder / "unet" / "config.json").is_file():
        raise DreamlabError(f"model {model!r}: give {SD15!r} or a local folder in diffusers layout")
    return {part: json.loads((folder / part / "config.json").read_text()) for part in SD15_CONFIGS}


def meta_model(model: str = SD15) -> StableDiffusion:
    """UNet, VAE and text encoder on the meta device: the real architecture, no weights (and SD's
    tokenizer, which the identifier's word needs; no noise scheduler)."""
    configs = model_configs(model)
    with torch.device("meta"):
        return StableDiffusion(tokenizer=CLIPTokenizer.from_pretrained(TOKENIZER),
                               unet=UNet2DConditionModel.from_config(configs["unet"]),
                               vae=AutoencoderKL.from_config(configs["vae"]),
                               text_encoder=CLIPTextModel(CLIPTextConfig.from_dict(configs["text_encoder"])),
                               noise_scheduler=None)


class LiveBytes(TorchDispatchMode):
    """Counts the bytes of live tensors: every operation's output is seen here, below autograd
    (so what autograd saves for the backward pass is counted), and forgotten when freed.
    Tensors made before (the weights, counted apart) are made known: their views are no new memory."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = self.grads = self.activations = 0
        self.seen = WeakIdKeyDictionary()

    def know(self, tensors) -> None:
        self.seen.update({t.untyped_storage(): True for t in tensors})

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = made_like_before(func, args, kwargs or {})
        for t in tree_flatten(out)[0]:
            storage = t.untyped_storage() if isinstance(t, torch.Tensor) else None
            if storage is not None and storage not in self.seen:
                self.seen[storage] = True
                self.live += storage.nbytes()
                weakref.finalize(storage, self.free, storage.nbytes())
        self.peak = max(self.peak, self.live)
        self.activations = max(self.activations, self.live - self.grads)
        return out

    def free(self, nbytes: int) -> None:
        self.live -= nbytes

    def count_gradient(self, param: torch.Tensor) -> None:
        self.grads += param.grad.nbytes

    def forget_gradients(self, params: list[torch.Tensor]) -> None:
        self.grads -= sum(p.grad.nbytes for p in params)


# The shapes, strides and dtypes an operation gave, by operation and its inputs' own. On meta
# tensors many operations work these out in Python, a fraction of a millisecond each: most of an
# estimate's time. SD's blocks repeat and estimates repeat each other, so most are asked again.
MADE: dict = {}


def made_like_before(func, args, kwargs):
    """func(*args, **kwargs) on meta tensors; an operation seen before with inputs of the same
    shapes gets new tensors of the shapes it gave then. Only for operations that make new tensors:
    a view or an in-place operation shares its input's memory, so it runs."""
    if any(r.alias_info for r in func._schema.returns) or func._schema.is_mutable:
        return func(*args, **kwargs)
    try:
        key = (func, layout_of(args), layout_of(kwargs))
    except TypeError:  # an input it does not know how to compare: run it
        return func(*args, **kwargs)
    if key not in MADE:
        out = func(*args, **kwargs)
        flat, tree = tree_flatten(out)
        MADE[key] = [(t.shape, t.stride(), t.dtype) if isinstance(t, torch.Tensor) else t for t in flat], tree
        return out
    flat, tree = MADE[key]
    return tree_unflatten([torch.empty_strided(*t[:2], dtype=t[2], device="meta") if isinstance(t, tuple)
                           else t for t in flat], tree)


def layout_of(value):
    """What a meta operation's result depends on: tensors' shapes, strides and dtypes, and other values."""
    if isinstance(value, torch.Tensor):
        if value.device.type != "meta":
            raise TypeError  # (a real tensor's values could matter)
        return "tensor", tuple(value.shape), value.stride(), value.dtype, value.storage_offset()
    if isinstance(value, (list, tuple)):
        return type(value).__name__, *(layout_of(v) for v in value)
    if isinstance(value, dict):
        return tuple((k, layout_of(v)) for k, v in sorted(value.items()))
    if value is None or isinstance(value, (bool, int, float, str, torch.dtype, torch.device,
                                           torch.layout, torch.memory_format)):
        return value
    raise TypeError


# torch.autocast's rule for the operations SD's networks use: matrix products in half precision,
# normalisations and the loss in float32; every other operation runs in its inputs' dtype.
HALF_OPS = {F.linear, F.conv2d, torch.matmul, torch.bmm, torch.baddbmm, F.scaled_dot_product_attention}
FLOAT_OPS = {F.group_norm, F.layer_norm, F.softmax, F.mse_loss}


class LikeAGPU(TorchFunctionMode):
    """Does, on meta tensors, two things a GPU step does that the meta device does not:

    - autocast: torch.autocast acts on CPU and GPU tensors only, so its casts are made here by
      hand, above autograd as autocast does: the half copies are what autograd keeps, a half
      copy of every trained weight among them (which is why fp16 saves less than half). Building
      the modules in half precision instead would miss those and the normalisations' float32 outputs.
    - fused attention (attention="sdpa"): on a GPU, F.scaled_dot_product_attention runs a flash or
      memory-efficient kernel that never stores the (tokens x tokens) attention probabilities; on
      meta it takes the math path, which keeps them (in float32). Here it runs the
      memory-efficient kernel's own op, whose meta version makes exactly the tensors it keeps.
    """

    def __init__(self, fused_attention: bool = True):
        super().__init__()
        self.autocast, self.fused_attention = None, fused_attention  # autocast: None or a dtype
        self.attention_sizes = []  # batch x heads x tokens x tokens, per attention

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        dtype = self.autocast and (self.autocast if func in HALF_OPS else
                                   torch.float32 if func in FLOAT_OPS else None)
        if dtype:
            args, kwargs = tree_map_only(torch.Tensor, lambda t: t.to(dtype) if t.is_floating_point()
                                         else t, (args, kwargs))
        if func is F.scaled_dot_product_attention:
            query, key = args[:2]
            self.attention_sizes.append(query.numel() // query.shape[-1] * key.shape[-2])
            out = fused_attention(*args, **kwargs) if self.fused_attention else None
            if out is not None:
                return out
        return func(*args, **kwargs)


def fused_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **_):
    if attn_mask is not None:  # only CLIP's 77 tokens have a mask: tiny, the math path will do
        return None
    keep = torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value))
    return torch.ops.aten._scaled_dot_product_efficient_attention(
        query, key, value, None, keep, dropout_p, is_causal, scale=scale)[0]


def estimate(**options) -> dict:
    """Peak GPU memory of one DreamBooth training step, in GiB, for options named as in DEFAULTS.

    Returns weights, gradients, optimizer (its state), activations (their peak during forward
    and backward) and total: the step's peak, which is less than the sum of the parts, since
    gradients fill in while activations are freed. `peak_at` says when the peak comes.
    """
    unknown = set(options) - set(DEFAULTS)
    if unknown:
        raise DreamlabError(f"unknown option(s) {sorted(unknown)}; choose from {list(DEFAULTS)}")
    return dict(_estimate(tuple(sorted({**DEFAULTS, **options}.items()))))


@functools.lru_cache(maxsize=512)  # the table and plan() ask for the same settings again
def _estimate(options: tuple) -> tuple:
    s = Settings(**dict(options))  # estimate()'s options are named as Settings' fields
    sd = meta_model(s.model)
    counter, gpu = LiveBytes(), LikeAGPU(fused_attention=s.attention == "sdpa")
    # The same set-up as train(), on the meta device; the recomputation of gradient checkpointing,
    # in the backward pass, must also run like a GPU
    trained = list(make_trainable(s, sd, "meta", checkpoint_options=dict(
        use_reentrant=False, context_fn=lambda: (contextlib.nullcontext(), gpu))).values())
    # Cached latents (and text embeddings, when the text encoder is frozen): those models leave the GPU
    on_gpu = [sd.unet] + ([] if s.cache_latents else [sd.vae]) + (
        [sd.text_encoder] if s.text_encoder_trains or not s.cache_latents else [])
    tensors = [t for m in on_gpu for t in [*m.parameters(), *m.buffers()]]
    n_trained = sum(p.numel() for p in trained)
    weights = sum(t.nbytes for t in tensors)
    # The step in backward (optimizer.StepInBackward) updates the weights a bucket of gradients at a
    # time, and frees those: no full set of gradients. The optimizer train() builds (fused AdamW, or
    # 8-bit) updates in place: no weights-sized temporary in step().
    gradients = min(BUCKET_BYTES, 4 * n_trained) if s.step_in_backward else 4 * n_trained
    optimizer = (2 if s.use_8bit_adam else 8) * n_trained

    counter.know(tensors)
    watch_gradients(counter, trained, s.step_in_backward)
    batch = s.train_batch_size * (2 if s.prior_preservation else 1)  # + as many class images
    with counter:
        one_step(s, sd, gpu, on_gpu, batch)
    total = weights + optimizer + max(counter.peak, gradients)
    result = dict(weights=weights, gradients=gradients, optimizer=optimizer,
                  activations=counter.activations, total=total)
    return tuple({k: v / GiB for k, v in result.items()}.items()) + (
        ("trained_params", n_trained), ("batch", batch),
        ("peak_at", "backward" if counter.peak >= gradients else "optimizer step"))


def watch_gradients(counter: LiveBytes, trained: list, step_in_backward: bool) -> None:
    """Tell the counter of each gradient made, so that it can tell them from activations; with the
    step in backward, they are freed a bucket at a time, by the trainer's own buckets."""
    for p in trained:
        p.register_post_accumulate_grad_hook(counter.count_gradient)
    if step_in_backward:  # (hooks run in the order they were added: counted, then bucketed)
        GradientBuckets(trained, counter.forget_gradients)


def one_step(s: Settings, sd: StableDiffusion, gpu: "LikeAGPU", on_gpu: list, batch: int) -> None:
    """One training step on the meta device, as training_step() does it, for the counter to watch."""
    half = frozen_dtype(s.mixed_precision)
    latent = s.resolution // 2 ** (len(sd.vae.config.block_out_channels) - 1)
    with gpu, torch.device("meta"):
        if s.cache_latents:
            latents = torch.empty(batch, sd.unet.config.in_channels, latent, latent)
        else:
            with torch.no_grad():
                pixels = torch.empty(batch, 3, s.resolution, s.resolution, dtype=sd.vae.dtype)
                latents = sd.vae.encode(pixels).latent_dist.sample()
        latents = latents.float()
        noise = torch.randn_like(latents)
        noisy_latents = latents + noise  # add_noise: a weighted sum, same shape and memory
        timesteps = torch.randint(0, 1000, (batch,))
        # accelerate runs the trained models under autocast
        gpu.autocast = half if s.text_encoder_trains and half != torch.float32 else None
        if sd.text_encoder in on_gpu:
            with torch.set_grad_enabled(s.text_encoder_trains):
                text = sd.text_encoder(torch.zeros(batch, 77, dtype=torch.long))[0]
        else:
            text = torch.empty(batch, 77, sd.text_encoder.config.hidden_size, dtype=half)
        gpu.autocast = half if half != torch.float32 else None
        prediction = sd.unet(noisy_latents, timesteps, text.to(sd.unet.dtype)).sample
        loss = F.mse_loss(prediction.float(), noise.float())
        loss.backward()


def step_by_hand(**options) -> float:
    """Peak GiB of lesson 3's step by hand: float32, no savers, and AdamW updating one weight tensor
    at a time, each gradient freed once used. The peak is either the backward pass's (weights,
    activations, gradients) or the end of the update (weights and all of Adam's state)."""
    need = estimate(**{**options, "mixed_precision": "no"})
    return max(need["total"] - need["optimizer"], need["weights"] + need["optimizer"])


def attention_probabilities(model: str = SD15, resolution: int = 512, batch: int = 2) -> dict:
    """The attention probabilities (batch x heads x tokens x tokens) of one UNet forward pass:
    the math attention path keeps them all for the backward pass, in float32; flash and
    memory-efficient attention keep none. Returns their GiB in total and of the largest one."""
    unet, gpu = meta_model(model).unet, LikeAGPU()
    latent = resolution // 8
    with gpu, torch.device("meta"), torch.no_grad():
        unet(torch.empty(batch, unet.config.in_channels, latent, latent), torch.zeros(batch),
             torch.empty(batch, 77, unet.config.cross_attention_dim))
    return dict(total=4 * sum(gpu.attention_sizes) / GiB, largest=4 * max(gpu.attention_sizes) / GiB,
                count=len(gpu.attention_sizes))


def estimate_sampling(model: str = SD15, resolution: int = 512, batch: int = 4, guidance: bool = True,
                      dtype: str = "fp16") -> dict:
    """Peak GPU memory of drawing `batch` pictures at once with a pipeline whose UNet, VAE and text
    encoder are all in `dtype` ("fp16", "bf16" or "no": float32), in GiB, as estimate() counts it.

    Returns weights (the three models), denoising (what one denoising step holds beside them: the
    UNet at batch 2 x `batch` with classifier-free guidance, `batch` without, its input and the
    prompts' embeddings included), decoding (the VAE turning the `batch` latents into pictures, as
    the pipeline does, all at once) and total: weights plus the larger of the two. Attention runs
    fused (no tokens x tokens matrices), as diffusers does on a GPU. Not counted: the CUDA context,
    fragmentation, and the scheduler's few latent-sized tensors (a fraction of a MB at 512 px).
    """
    sd = meta_model(model)
    half = {"fp16": torch.float16, "bf16": torch.bfloat16, "no": torch.float32}[dtype]
    modules = (sd.unet, sd.vae, sd.text_encoder)
    for module in modules:  # (nn.Module's own .to: diffusers' warns on every cast)
        torch.nn.Module.to(module, dtype=half)
    tensors = [t for m in modules for t in [*m.parameters(), *m.buffers()]]
    counter, rows = LiveBytes(), batch * (2 if guidance else 1)  # the prompt's rows, then the empty prompt's
    counter.know(tensors)
    latent = resolution // 2 ** (len(sd.vae.config.block_out_channels) - 1)
    with counter, LikeAGPU(fused_attention=True), torch.device("meta"), torch.no_grad():
        text = sd.text_encoder(torch.zeros(rows, 77, dtype=torch.long))[0]
        latents = torch.empty(batch, sd.unet.config.in_channels, latent, latent, dtype=half)
        counter.peak = counter.live
        sd.unet(torch.cat([latents] * (rows // batch)), torch.zeros(rows), text)  # one denoising step
        denoising = counter.peak
        counter.peak = counter.live
        sd.vae.decode(latents)
        decoding = counter.peak
    weights = sum(t.nbytes for t in tensors)
    return {k: v / GiB for k, v in dict(weights=weights, denoising=denoising, decoding=decoding,
                                         total=weights + max(denoising, decoding)).items()}


# plan()'s ladder: from the best result (and fastest step) down to the least memory; each rung
# gives up a little more than the one before. It starts at fp16 mixed precision, which gives up
# nothing (float32 master weights: the updates stay exact) and is several times faster on a GPU's
# tensor cores; plain float32 is in table() for comparison only.
FP16 = dict(mixed_precision="fp16")
FLOAT32 = ("full fine-tune, float32", dict(mixed_precision="no"))
LADDER = [
    ("full, fp16 mixed precision", FP16),
    ("full, fp16, grad. checkpointing",  # the same result, ~25 % slower: recomputes activations
     {**FP16, "gradient_checkpointing": True}),
    ("full, fp16, ckpt, step in backward",  # the same result; no gradient accumulation
     {**FP16, "gradient_checkpointing": True, "step_in_backward": True}),
    ("full, fp16, ckpt, in bwd, 8-bit Adam",  # Adam's averages rounded to 8 bits: nearly the same result
     {**FP16, "gradient_checkpointing": True, "step_in_backward": True, "use_8bit_adam": True}),
    ("full, fp16, ckpt, in bwd, 8-bit, cached",  # the same crop of each photo at every step
     {**FP16, "gradient_checkpointing": True, "step_in_backward": True, "use_8bit_adam": True,
      "cache_latents": True}),
    ("LoRA, fp16", {**FP16, "lora": True}),  # trains 0.1 % of the weights: learns the subject less well
    ("LoRA, fp16, ckpt", {**FP16, "lora": True, "gradient_checkpointing": True}),
    ("LoRA, fp16, ckpt, cached latents",
     {**FP16, "lora": True, "gradient_checkpointing": True, "cache_latents": True}),
]
SAVINGS = dict(mixed_precision="no", gradient_checkpointing=False, use_8bit_adam=False,
               cache_latents=False, lora=False, step_in_backward=False)  # what a rung leaves out is off


def rungs(**fixed):
    """The ladder's settings, with `fixed` ones (e.g. train_text_encoder=True) kept on every rung."""
    seen = []
    for label, rung in LADDER:
        options = {**SAVINGS, **rung, **fixed}
        if options not in seen:
            seen.append(options)
            yield label, options


MARGIN = 0.05  # of a GPU's memory, left for the CUDA context and fragmentation


def plan(gpu_gib: float | None = None, margin: float = MARGIN, **fixed) -> tuple[dict, dict]:
    """The first settings of the ladder whose estimate fits `gpu_gib` less a `margin` (for the CUDA
    context and fragmentation); `gpu_gib` defaults to this machine's GPU. Returns (options, estimate).

    The ladder gives up the least first: fp16 costs nothing (the trained weights stay float32),
    checkpointing costs time only, 8-bit Adam and cached latents change the result a little,
    LoRA (0.1 % of the weights trained) the most. `fixed` options are kept on every rung.
    """
    gpu_gib = gpu_gib or gpu_memory_gib()
    if not gpu_gib:
        raise DreamlabError("no GPU here: give its memory, e.g. plan(14.75) for Colab's T4")
    for _, options in rungs(**fixed):
        need = estimate(**options)
        if need["total"] <= gpu_gib * (1 - margin):
            return {**DEFAULTS, **options}, need
    raise DreamlabError(f"nothing fits in {gpu_gib:.2f} GiB: the smallest setting needs {need['total']:.2f} "
                        "GiB; lower resolution or train_batch_size")


def table(**fixed) -> list[dict]:
    """Plain float32, then every rung of the ladder (SD 1.5, 512 px, prior preservation by default)."""
    label, float32 = FLOAT32
    rows = [(label, {**SAVINGS, **float32, **fixed})] + list(rungs(**fixed))
    return [{"settings": label, **estimate(**options)} for label, options in rows]


def format_table(rows: list[dict]) -> str:
    lines = [f"{'settings':40} {'trained':>8} {'weights':>8} {'grads':>6} {'Adam':>6} {'activ.':>7} "
             f"{'total GiB':>9}"]
    lines += [f"{r['settings']:40} {r['trained_params'] / 1e6:7.1f}M {r['weights']:8.2f} "
              f"{r['gradients']:6.2f} {r['optimizer']:6.2f} {r['activations']:7.2f} {r['total']:9.2f}"
              for r in rows]
    return "\n".join(lines)


def gpu_memory_gib() -> float | None:
    """This machine's GPU memory in GiB (None without one)."""
    return torch.cuda.get_device_properties(0).total_memory / GiB if torch.cuda.is_available() else None
