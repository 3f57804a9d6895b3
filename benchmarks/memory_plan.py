"""The memory planner on SD 1.5: its table, the settings it picks per GPU, and its known biases.

    python benchmarks/memory_plan.py                 # SD 1.5, 512 px, prior preservation
    python benchmarks/memory_plan.py --resolution 768 --model path/to/diffusers-folder

Everything runs on PyTorch's meta device (no weights, no GPU): dreamlab/memory.py explains how.
Prints
  - the ladder of settings plan() climbs down, for the UNet alone and with the text encoder;
  - what plan() picks for a T4 (14.75 GiB), an 8, a 24 and a 4 GiB GPU;
  - how much the math attention path would over-count: the attention probabilities it keeps
    and the flash / memory-efficient kernels (what diffusers uses on GPUs) do not;
  - known figures to check the numbers against, and how long estimating took.
"""

import argparse
import time

import torch

from dreamlab import DreamlabError, memory

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--model", default=memory.SD15)
parser.add_argument("--resolution", type=int, default=512)
parser.add_argument("--threads", type=int, default=1)
args = parser.parse_args()
torch.set_num_threads(args.threads)
base = dict(model=args.model, resolution=args.resolution)
start = time.perf_counter()


def changed(options: dict) -> str:
    """The options plan() chose that differ from the defaults."""
    return ", ".join(f"{k}={v}" for k, v in options.items() if v != memory.DEFAULTS[k] and k not in base)


for te in (False, True):
    what = "UNet and text encoder" if te else "UNet (text encoder frozen)"
    print(f"\n== {args.model} at {args.resolution} px, prior preservation (batch 1+1), training the {what}")
    print(memory.format_table(memory.table(train_text_encoder=te, **base)))

print("\n== what plan() picks (5 % margin), training the UNet / UNet and text encoder")
for gpu in (14.75, 8, 24, 4):
    for te in (False, True):
        try:
            options, need = memory.plan(gpu, train_text_encoder=te, **base)
            print(f"{gpu:6.2f} GiB  text encoder {'trained' if te else 'frozen '}: {need['total']:5.2f} GiB "
                  f"with {changed(options)}")
        except DreamlabError as e:
            print(f"{gpu:6.2f} GiB: {e}")

print("\n== the math attention path's over-count")
probs = memory.attention_probabilities(args.model, args.resolution, batch=2)
print(f"attention probabilities of one UNet forward (batch 2): {probs['count']} tensors, "
      f"{probs['total']:.2f} GiB in float32, the largest {probs['largest']:.2f} GiB; "
      "flash/SDPA would not keep these")
print("estimates with the math path (attention=\"math\") and with the fused kernels (the default), GiB:")
print(f"{'settings':40} {'total: math':>11} {'SDPA':>6} {'over':>6}   {'activations: math':>17} "
      f"{'math - probs':>12} {'SDPA':>6}")
for label, options in [memory.LADDER[i] for i in (0, 1, 3, 5)]:  # fp16; +checkpointing; +8-bit; LoRA
    math = memory.estimate(**base, **options, attention="math")
    fused = memory.estimate(**base, **options)
    # with checkpointing, the math path keeps one block's probabilities at a time, not all of them
    less = "-" if options.get("gradient_checkpointing") else f"{math['activations'] - probs['total']:.2f}"
    print(f"{label:40} {math['total']:11.2f} {fused['total']:6.2f} {math['total'] - fused['total']:6.2f}   "
          f"{math['activations']:17.2f} {less:>12} {fused['activations']:6.2f}")

if args.model == memory.SD15 and args.resolution == 512:
    print("\n== known figures")
    full = memory.estimate(**base)
    n = full["trained_params"]
    print(f"UNet weights+grads+AdamW in float32: 16 B x {n / 1e6:.1f}M = {16 * n / 2**30:.2f} GiB "
          f"({16 * n / 1e9:.2f} GB); the planner's peak for the full fp32 fine-tune: {full['total']:.2f} GiB "
          f"(at the {full['peak_at']}: activations and gradients at once)")
    recipe = memory.estimate(**base, train_text_encoder=True, mixed_precision="fp16",
                             gradient_checkpointing=True, use_8bit_adam=True, cache_latents=True)
    print(f"Colab recipe (UNet+text encoder, fp16, checkpointing, 8-bit Adam, cached latents): "
          f"{recipe['total']:.2f} GiB = {recipe['total'] * 2**30 / 1e9:.2f} GB; measured on a T4: 9.92 GB")

print(f"\nestimating took {time.perf_counter() - start:.1f} s in all ({args.threads} thread; "
      "about a second per setting, each estimated once and remembered)")
