"""Train the drawing toy base (toy/drawing_base.py) from a seed, on CPU, with our own loop.

1. VAE: reconstruction (L1 + a tiny KL term) of 32x32 crops of freshly drawn scenes and of random
   bar compositions (strokes of every thickness, so later concepts such as the demo's chair decode
   too; no chair is ever drawn here).
2. A fixed pool of captioned scenes (toy/scenes.py `base_scene`: shapes x colours x backgrounds, no
   chairs) is encoded once; the latent scale is set so the pool's latents have unit variance
   (`vae.config.scaling_factor`, as SD1's 0.18215 does for its VAE).
3. UNet and text encoder jointly: v-prediction under the scheduler's own noise schedule (zero
   terminal SNR, drawing_base.SCHEDULER_CONFIG), 10% of captions dropped to "" (so classifier-free
   guidance works), AdamW with a short warm-up, gradients clipped at 1, and an exponential moving
   average of the weights, which is what is saved.

Everything draws from seeded generators; the same seed and thread count on the same machine give
the same weights. `RECIPE` is the whole recipe; its id (drawing_base.recipe_id) is stored in the file.
One torch thread: on a shared 2-core machine two threads contend and run several times slower.
"""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Callable
from pathlib import Path

from lora_pipeline.toy import scenes

RECIPE: dict = {
    "seed": 0,
    "threads": 1,
    "vae": {"steps": 600, "batch": 16, "crop": 32, "lr": 2e-3, "kl_weight": 1e-6, "bars_fraction": 0.3},
    "pool": 4096,
    "unet": {"steps": 2000, "batch": 32, "lr": 1e-3, "warmup": 100, "caption_dropout": 0.1,
             "ema_decay": 0.995},
}

Progress = Callable[[str, int, int, float], None]  # (phase, step, total, loss)


def _pixels(images):
    """PIL images -> a float tensor (N, 3, H, W) in [-1, 1]."""
    import numpy as np
    import torch

    arr = np.stack([np.asarray(im, dtype=np.float32) for im in images]) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def _bars(rng: random.Random, size: int):
    """1-3 random axis-aligned bars of random colours and thickness on a flat background."""
    from PIL import Image, ImageDraw

    bg = rng.choice(list(scenes.BACKGROUNDS.values()))
    im = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(im)
    colour = rng.choice(list(scenes.COLOURS.values()))
    for _ in range(rng.randint(1, 3)):
        t = rng.randint(3, 12)
        x, y, length = rng.randint(4, size - 16), rng.randint(4, size - 16), rng.randint(12, size // 2 + 8)
        d.rectangle([x, y, x + length, y + t] if rng.random() < 0.5 else [x, y, x + t, y + length], fill=colour)
    return im


def train_vae(vae, recipe: dict, rng: random.Random, progress: Progress | None) -> list[float]:
    import torch

    r = recipe["vae"]
    opt = torch.optim.AdamW(vae.parameters(), lr=r["lr"])
    gen = torch.Generator().manual_seed(recipe["seed"] + 10)
    size, crop, losses = scenes.SIZE, r["crop"], []
    vae.train()
    for step in range(1, r["steps"] + 1):
        ims = []
        for _ in range(r["batch"]):
            im = _bars(rng, size) if rng.random() < r["bars_fraction"] else scenes.draw(scenes.base_scene(rng))
            x0, y0 = rng.randint(0, size - crop), rng.randint(0, size - crop)
            ims.append(im.crop((x0, y0, x0 + crop, y0 + crop)))
        x = _pixels(ims)
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
        rec = vae.decode(z).sample
        loss = (rec - x).abs().mean() + r["kl_weight"] * post.kl().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if progress:
            progress("vae", step, r["steps"], losses[-1])
    vae.eval()
    return losses


def encode_pool(vae, tokenizer, recipe: dict, rng: random.Random):
    """(unscaled latents, input ids, captions) of the scene pool."""
    import torch

    captions, latents = [], []
    with torch.no_grad():
        for start in range(0, recipe["pool"], 64):
            batch = [scenes.base_scene(rng) for _ in range(min(64, recipe["pool"] - start))]
            captions += [s.caption() for s in batch]
            latents.append(vae.encode(_pixels([scenes.draw(s) for s in batch])).latent_dist.mean)
    ids = tokenizer(captions, padding="max_length", truncation=True, max_length=tokenizer.model_max_length,
                    return_tensors="pt").input_ids
    return torch.cat(latents), ids, captions


def train_unet(unet, text_encoder, tokenizer, latents, ids, recipe: dict, progress: Progress | None):
    """Joint UNet + text-encoder training; returns (EMA unet, EMA text encoder, losses)."""
    import torch
    from diffusers import DDPMScheduler

    from lora_pipeline.toy.drawing_base import SCHEDULER_CONFIG

    r = recipe["unet"]
    sched = DDPMScheduler(**{k: v for k, v in SCHEDULER_CONFIG.items() if k != "set_alpha_to_one"})
    sched.alphas_cumprod = sched.alphas_cumprod.float()
    uncond = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length,
                       return_tensors="pt").input_ids[0]
    params = [p for m in (unet, text_encoder) for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=r["lr"])
    warm = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / r["warmup"]))
    ema = [copy.deepcopy(unet).requires_grad_(False), copy.deepcopy(text_encoder).requires_grad_(False)]
    gen = torch.Generator().manual_seed(recipe["seed"] + 20)
    unet.train()
    text_encoder.train()
    losses = []
    n = latents.shape[0]
    for step in range(1, r["steps"] + 1):
        idx = torch.randint(n, (r["batch"],), generator=gen)
        batch_ids = ids[idx].clone()
        drop = torch.rand(r["batch"], generator=gen) < r["caption_dropout"]
        batch_ids[drop] = uncond
        x0 = latents[idx]
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, sched.config.num_train_timesteps, (r["batch"],), generator=gen)
        pred = unet(sched.add_noise(x0, noise, t), t, encoder_hidden_states=text_encoder(batch_ids)[0]).sample
        loss = torch.nn.functional.mse_loss(pred, sched.get_velocity(x0, noise, t))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        warm.step()
        with torch.no_grad():
            d = min(r["ema_decay"], (1 + step) / (10 + step))
            for tgt, src in zip(ema, (unet, text_encoder), strict=True):
                for pe, ps in zip(tgt.parameters(), src.parameters(), strict=True):
                    pe.mul_(d).add_(ps.detach(), alpha=1 - d)
        losses.append(float(loss.detach()))
        if progress:
            progress("unet", step, r["steps"], losses[-1])
    return ema[0].eval(), ema[1].eval(), losses


def train_drawing_base(out: Path, recipe: dict | None = None, progress: Progress | None = None) -> dict:
    """Train from scratch and write the weights file (drawing_base.save_weights); returns its metadata."""
    from lora_pipeline.quiet import quiet_libraries

    quiet_libraries()
    import tempfile

    import torch
    from transformers import CLIPTokenizer

    from lora_pipeline.toy import drawing_base as db

    recipe = recipe or RECIPE
    threads = torch.get_num_threads()
    torch.set_num_threads(recipe["threads"])
    started = time.time()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tok_dir = db.train_scene_tokenizer(Path(tmp) / "tokenizer")
            tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
            vocab = db.vocab_sha256(tok_dir)
        unet, vae, text_encoder = db.build_modules(tokenizer, seed=recipe["seed"])
        rng = random.Random(recipe["seed"])
        t0 = time.time()
        vae_losses = train_vae(vae, recipe, rng, progress)
        t_vae = time.time() - t0
        latents, ids, _ = encode_pool(vae, tokenizer, recipe, rng)
        scaling = float(1.0 / latents.std())
        t0 = time.time()
        unet, text_encoder, losses = train_unet(unet, text_encoder, tokenizer, latents * scaling, ids, recipe,
                                                progress)
        t_unet = time.time() - t0
    finally:
        torch.set_num_threads(threads)

    def tail(xs: list[float]) -> float:
        k = max(1, len(xs) // 10)
        return round(sum(xs[-k:]) / k, 5)

    meta = {"recipe_id": db.recipe_id(recipe), "recipe": recipe, "seed": recipe["seed"], "vocab_sha256": vocab,
            "vae_scaling_factor": round(scaling, 6),
            "training": {"seconds": {"vae": round(t_vae, 1), "unet": round(t_unet, 1),
                                     "total": round(time.time() - started, 1)},
                         "threads": recipe["threads"], "torch": torch.__version__,
                         "final_loss": {"vae": tail(vae_losses), "unet": tail(losses)}}}
    db.save_weights(Path(out), unet, vae, text_encoder, meta)
    return meta
