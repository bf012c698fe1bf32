"""Train `tiny-var`: a class-conditional VAR + multi-scale VQ-VAE on scikit-learn's bundled 8×8
digits, upsampled to 32×32 (black ink on white, RGB). Seeded; CPU only; about 40 minutes on 2 cores.

    pip install scikit-learn torch==2.13.0
    python examples/train_tiny_var.py --out edgegen/_bundled/tiny-var

Stage 1 trains the VQ-VAE (L2 + L1 reconstruction, residual quantization over the scale pyramid
with straight-through gradients, dead codes restarted from the batch). Stage 2 tokenizes every
digit and trains the transformer with teacher forcing (block-causal), dropping the class 10% of the
time so that classifier-free guidance works. Both use the PyTorch model of tests/var_reference.py,
whose state dicts carry FoundationVision's names, so `edgegen convert` reads the result as it
reads the released checkpoints. Weights are saved in fp16 (half the size; the card's accuracy is
measured on the saved weights).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_var_data import digit_images, image_to_digit_features  # noqa: E402
from var_reference import VAR, VQVAE  # noqa: E402

PATCH_NUMS = (1, 2, 3, 4, 6, 8)
VAE_ARGS = dict(V=256, Cvae=16, ch=32, ch_mult=(1, 1, 2), num_res_blocks=1, patch_nums=PATCH_NUMS)
VAR_ARGS = dict(depth=4, C=128, H=4, V=256, Cvae=16, num_classes=10, patch_nums=PATCH_NUMS)


def cosine_lr(step: int, total: int, peak: float, warmup: int = 100) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


# ----------------------------------------------------------------------------- stage 1: VQ-VAE
def quantize_train(vae: VQVAE, f: torch.Tensor):
    """Residual quantization with straight-through gradients; returns (f̂ for the decoder, vq loss, ids)."""
    q, f_detached = vae.quantize, f.detach()
    rest, f_hat, loss, ids = f_detached.clone(), torch.zeros_like(f), 0.0, []
    for si, pn in enumerate(q.patch_nums):
        z = F.interpolate(rest, size=(pn, pn), mode="area") if si != len(q.patch_nums) - 1 else rest
        zf = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        idx = torch.cdist(zf, q.embedding.weight.detach()).argmin(1)
        ids.append(idx)
        h = q.lift(si, q.embed(idx.view(f.shape[0], pn * pn), pn))
        f_hat = f_hat + h
        rest = rest - h.detach()
        loss = loss + 0.25 * F.mse_loss(f_hat.detach(), f) + F.mse_loss(f_hat, f_detached)
    return f_detached + (f_hat - f_detached).detach() + (f - f_detached), loss / len(q.patch_nums), ids


def train_vae(images: torch.Tensor, steps: int, batch: int, seed: int) -> VQVAE:
    torch.manual_seed(seed)
    vae = VQVAE(**VAE_ARGS)
    opt = torch.optim.AdamW(vae.parameters(), lr=2e-3, weight_decay=0.0, betas=(0.9, 0.95))
    g = torch.Generator().manual_seed(seed)
    hits = torch.zeros(vae.quantize.embedding.weight.shape[0])
    start = time.time()
    for step in range(steps):
        x = images[torch.randint(0, len(images), (batch,), generator=g)]
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, steps, 2e-3)
        f = vae.quant_conv(vae.encoder(x))
        f_hat, vq_loss, ids = quantize_train(vae, f)
        rec = vae.decoder(vae.post_quant_conv(f_hat))
        loss = F.mse_loss(rec, x) + 0.2 * (rec - x).abs().mean() + vq_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        hits += torch.bincount(torch.cat(ids), minlength=hits.numel()).float()
        if step % 50 == 49 and step < steps * 0.8:
            restart_dead_codes(vae, f.detach(), hits, g)
            hits.zero_()
        if step % 100 == 0 or step == steps - 1:
            print(f"vae step {step:5d}  loss {loss.item():.4f}  rec {F.mse_loss(rec, x).item():.4f}  "
                  f"{time.time() - start:.0f}s", flush=True)
    return vae.eval()


@torch.no_grad()
def restart_dead_codes(vae: VQVAE, f: torch.Tensor, hits: torch.Tensor, g: torch.Generator) -> None:
    """Codes no token used in the last window take the value of random encoder vectors."""
    dead = (hits == 0).nonzero().flatten()
    if len(dead) == 0:
        return
    vectors = f.permute(0, 2, 3, 1).reshape(-1, f.shape[1])
    pick = vectors[torch.randint(0, len(vectors), (len(dead),), generator=g)]
    vae.quantize.embedding.weight[dead] = pick + 0.01 * torch.randn(pick.shape, generator=g)


# ----------------------------------------------------------------------------- stage 2: VAR
def train_var(vae: VQVAE, images: torch.Tensor, labels: torch.Tensor, steps: int, batch: int, seed: int,
              snapshot=lambda var, step: None) -> VAR:
    with torch.no_grad():
        ids, _ = vae.quantize.tokens(vae.quant_conv(vae.encoder(images)))
        inputs = vae.quantize.var_input(ids)
        targets = torch.cat(ids, 1)
    torch.manual_seed(seed)
    var = VAR(**VAR_ARGS)
    init_var(var)
    opt = torch.optim.AdamW(var.parameters(), lr=1e-3, weight_decay=0.05, betas=(0.9, 0.95))
    g = torch.Generator().manual_seed(seed + 1)
    start = time.time()
    for step in range(steps):
        pick = torch.randint(0, len(images), (batch,), generator=g)
        y = labels[pick].clone()
        y[torch.rand(batch, generator=g) < 0.1] = var.num_classes  # the null class, for CFG
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, steps, 1e-3)
        logits = var(y, inputs[pick])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets[pick].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(var.parameters(), 2.0)
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"var step {step:5d}  loss {loss.item():.4f}  {time.time() - start:.0f}s", flush=True)
        if step % 250 == 249:
            snapshot(var, step + 1)
    return var.eval()


@torch.no_grad()
def init_var(var: VAR) -> None:
    """Small normal init; AdaLN gates start near zero so each block starts close to the identity."""
    for name, p in var.named_parameters():
        if p.dim() >= 2:
            torch.nn.init.trunc_normal_(p, std=0.02)
        elif "scale_mul" not in name:
            p.zero_()
    for block in var.blocks:
        block.ada_lin[1].weight.mul_(0.1)


# ----------------------------------------------------------------------------- evaluation and saving
@torch.no_grad()
def sample(var: VAR, vae: VQVAE, labels, cfg: float, top_k: int, seed: int):
    from var_reference import run_scales

    g = torch.Generator().manual_seed(seed)

    def pick(si, logits):
        if top_k:
            kth = logits.topk(top_k, -1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, -torch.inf)
        probs = logits.softmax(-1)
        return torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=g).view(probs.shape[:2])

    return run_scales(var, vae, labels, cfg, pick=pick)[3]


def evaluate(var: VAR, vae: VQVAE, classifier, per_class: int, cfg: float, top_k: int, seed: int) -> float:
    labels = torch.arange(10).repeat_interleave(per_class)
    images = sample(var, vae, labels, cfg, top_k, seed)  # (N, 3, 32, 32) in [0, 1]
    predicted = classifier.predict(image_to_digit_features(images.permute(0, 2, 3, 1).numpy()))
    return float((predicted == labels.numpy()).mean())


def save(var: VAR, vae: VQVAE, out: Path) -> None:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    half = lambda sd: {k: v.detach().to(torch.float16 if v.is_floating_point() else v.dtype).contiguous()  # noqa: E731
                       for k, v in sd.items()}
    var_sd = {k: v for k, v in var.state_dict().items() if k != "attn_bias_for_masking"}
    vae_sd = {k: v for k, v in vae.state_dict().items() if not k.startswith(("encoder.", "quant_conv."))}
    save_file(half(var_sd), str(out / "var.safetensors"))
    save_file(half(vae_sd), str(out / "vae.safetensors"))
    config = {"model_type": "var", "num_classes": 10, "image_size": 32, "patch_nums": list(PATCH_NUMS),
              "class_names": [str(i) for i in range(10)], "transformer": VAR_ARGS,
              "vqvae": {k: list(v) if isinstance(v, tuple) else v for k, v in VAE_ARGS.items()}}
    config["transformer"] = {k: list(v) if isinstance(v, tuple) else v for k, v in VAR_ARGS.items()}
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def round_to_fp16(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(p.half().float())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--vae-steps", type=int, default=1500)
    parser.add_argument("--var-steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--finish-from", type=int, default=0, help="save the snapshot after this many VAR steps")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from tiny_var_data import train_classifier

    start = time.time()
    images, labels = digit_images(32)
    stage = args.out.parent / f".{args.out.name}-stages"  # snapshots, to resume or to stop early
    stage.mkdir(parents=True, exist_ok=True)
    if (stage / "vae.pt").is_file():
        vae = VQVAE(**VAE_ARGS)
        vae.load_state_dict(torch.load(stage / "vae.pt", weights_only=True))
        vae.eval()
    else:
        vae = train_vae(images, args.vae_steps, args.batch, args.seed)
        torch.save(vae.state_dict(), stage / "vae.pt")
    if args.finish_from:  # stop early: evaluate and save the snapshot taken after that many steps
        var = VAR(**VAR_ARGS)
        var.load_state_dict(torch.load(stage / f"var-{args.finish_from}.pt", weights_only=True))
        var.eval()
        args.var_steps = args.finish_from
    else:
        snapshot = lambda model, step: torch.save(model.state_dict(), stage / f"var-{step}.pt")  # noqa: E731
        var = train_var(vae, images, labels, args.var_steps, args.batch, args.seed, snapshot)
    round_to_fp16(var), round_to_fp16(vae)
    classifier, held_out = train_classifier(args.seed)
    accuracy = {cfg: evaluate(var, vae, classifier, 20, cfg, 0, args.seed) for cfg in (0.0, 1.0, 2.0, 4.0)}
    save(var, vae, args.out)
    summary = {"minutes": round((time.time() - start) / 60, 1), "vae_steps": args.vae_steps,
               "var_steps": args.var_steps, "batch": args.batch, "classifier_held_out_accuracy": held_out,
               "class_conditional_accuracy_by_cfg": accuracy}
    print(json.dumps(summary, indent=2))
    (args.out / "training.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
