"""scripts/pretrain_toy.py, run for a few steps: it makes a model folder that dreamlab opens, and
the same seed makes the same weights (data/toy-sd can be rebuilt exactly)."""

from safetensors.torch import load_file

from dreamlab import load_model

PARTS = {"vae": "diffusion_pytorch_model", "unet": "diffusion_pytorch_model", "text_encoder": "model"}


def pretrain(run_script, out, seed: int = 0) -> None:
    stdout = run_script("scripts/pretrain_toy.py", "--threads", "1", "--vae-steps", "2", "--vae-batch", "4",
                        "--unet-steps", "2", "--batch", "4", "--pictures", "16", "--seed", seed,
                        "--out", out)
    assert "saved" in stdout, stdout


def weights(folder) -> dict:
    return {f"{part}.{k}": v for part, name in PARTS.items()
            for k, v in load_file(folder / part / f"{name}.safetensors").items()}


def test_pretraining_is_repeatable_and_loads(run_script, tmp_path):
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        pretrain(run_script, tmp_path / name, seed)
    a, b, c = (weights(tmp_path / name) for name in "abc")
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a), "same seed, different weights"
    assert any(not a[k].equal(c[k]) for k in a), "another seed gave the same weights"
    sd = load_model(str(tmp_path / "a"))  # as the lessons open data/toy-sd
    assert sd.vae.config.latent_channels == 4 and sd.unet.config.sample_size == 16
    assert len(sd.tokenizer) == 49408
