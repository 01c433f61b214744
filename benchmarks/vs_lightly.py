"""The same SimSiam setup in this package and in lightly, side by side (ours / theirs).

Same for both: the backbone (this package's CIFAR-stem ResNet at ``--width``), the heads
(SimSiam's CIFAR head: a 2-layer projector and a 2-layer predictor with this package's
sizes, built on lightly's side with lightly's ``ProjectionHead`` from the same blocks),
the batch, the augmentations (crop 0.2-1, flip 0.5, colour jitter 0.4/0.4/0.4/0.1 at
0.8, grayscale 0.2, no blur at 32 px; lightly's ``SimSiamTransform``), the optimiser
(SGD, lr 0.06 x batch/256, momentum 0.9, weight decay 5e-4), the precision, the data
loader settings and the images (decoded once into memory on both sides: lightly gets PIL
images, so neither side reads files during the run).

Lightly's side is its documented recipe: per-image transforms in the data loader, a
plain Lightning module. Ours runs per variant (see ``benchmarks.throughput``).

Needs lightly (benchmark-only): ``pip install --no-deps -r benchmarks/requirements-lightly.txt``.

    python -m benchmarks.vs_lightly
"""
from __future__ import annotations

import argparse
from dataclasses import replace

from benchmarks._util import common_arguments, make_config, report, resolve, timed_training, with_options
from benchmarks.throughput import run_ours, variant_options

DEFAULT_VARIANTS = {"cpu": "per-image,batched,batched+cl", "cuda": "per-image,batched+cl,batched+cl+compile"}


def _lightly_blocks(network):
    """lightly ``ProjectionHead`` blocks equal to our fixed SimSiam heads (Linear, BN, activation)."""
    from torch import nn

    def blocks(sequential):
        out, layers = [], list(sequential)
        i = 0
        while i < len(layers):
            linear = layers[i]
            assert isinstance(linear, nn.Linear), layers
            norm = act = None
            i += 1
            if i < len(layers) and isinstance(layers[i], nn.BatchNorm1d):
                norm = nn.BatchNorm1d(layers[i].num_features, affine=layers[i].affine)
                i += 1
            if i < len(layers) and isinstance(layers[i], nn.ReLU):
                act = nn.ReLU()
                i += 1
            out.append((linear.in_features, linear.out_features, norm, act, linear.bias is not None))
        return out

    return blocks(network.projector), blocks(network.predictor)


def lightly_module(cfg, network, epochs: int):
    import pytorch_lightning as pl
    import torch
    from lightly.loss import NegativeCosineSimilarity
    from lightly.models.modules.heads import ProjectionHead

    projector_blocks, predictor_blocks = _lightly_blocks(network)
    o, batch_size = cfg.optim, cfg.data.batch_size
    channels_last = cfg.trainer.channels_last

    class SimSiam(pl.LightningModule):  # lightly's SimSiam example, with our sizes
        def __init__(self):
            super().__init__()
            self.backbone = network.backbone
            self.projection_head = ProjectionHead(projector_blocks)
            self.prediction_head = ProjectionHead(predictor_blocks)
            self.criterion = NegativeCosineSimilarity()

        def forward(self, x):
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            z = self.projection_head(self.backbone(x).flatten(start_dim=1))
            return z.detach(), self.prediction_head(z)

        def training_step(self, batch, batch_idx):
            (x0, x1) = batch[0]
            z0, p0 = self.forward(x0)
            z1, p1 = self.forward(x1)
            loss = 0.5 * (self.criterion(z0, p1) + self.criterion(z1, p0))
            self.log("train_loss_ssl", loss)
            return loss

        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=o.lr * batch_size / 256, momentum=o.momentum,
                                  weight_decay=o.weight_decay)
            return [opt], [torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, epochs))]

    module = SimSiam()
    if channels_last:
        module.backbone.to(memory_format=torch.channels_last)
    return module


def lightly_loader(cfg, data):
    import torch
    from lightly.transforms import SimSiamTransform
    from torch.utils.data import DataLoader, Dataset
    from torchvision.transforms.functional import to_pil_image

    from experiments.core.assembly import augment_settings

    s = augment_settings(cfg, data.image_size)
    b, c, sat, hue = s.jitter
    transform = SimSiamTransform(input_size=data.image_size, cj_prob=s.jitter_p, cj_strength=1.0, cj_bright=b,
                                 cj_contrast=c, cj_sat=sat, cj_hue=hue, min_scale=s.crop_min_scale,
                                 random_gray_scale=s.grayscale_p, gaussian_blur=s.blur_p, hf_prob=s.hflip_p,
                                 normalize={"mean": data.mean, "std": data.std})

    class InMemoryImages(Dataset):
        def __init__(self, images, labels):
            self.images = [to_pil_image(image) for image in images]
            self.labels = labels.tolist()

        def __len__(self):
            return len(self.images)

        def __getitem__(self, index):
            return transform(self.images[index]), self.labels[index]

    workers = cfg.data.num_workers
    return DataLoader(InMemoryImages(data.train.images, data.train.labels), batch_size=cfg.data.batch_size,
                      shuffle=True, drop_last=True, num_workers=workers, persistent_workers=workers > 0,
                      pin_memory=torch.cuda.is_available())


def run_lightly(args, cfg, data, steps: int, warmup: int) -> dict:
    import pytorch_lightning as pl

    from experiments.core.assembly import build_space

    pl.seed_everything(args.seed, verbose=False)
    network = build_space(cfg, framework="simsiam", head_space="fixed").freeze({})
    module = lightly_module(cfg, network, 1)
    if cfg.trainer.compile:
        module.backbone.compile()
    return timed_training(args, cfg, module, lightly_loader(cfg, data), steps, warmup, module)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.vs_lightly", description=__doc__.splitlines()[0])
    common_arguments(parser)
    parser.add_argument("--variants", default=None, help=f"our variants (default CPU: {DEFAULT_VARIANTS['cpu']}; "
                                                         f"CUDA: {DEFAULT_VARIANTS['cuda']})")
    parser.add_argument("--precision", default=None, help="both sides (default: 32-true on CPU, bf16-mixed on CUDA)")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1, help="repeat lightly and ours alternately; best of rounds")
    args = resolve(parser.parse_args(argv))
    try:
        import lightly
    except ImportError:
        raise SystemExit("error: lightly is not installed: "
                         "pip install --no-deps -r benchmarks/requirements-lightly.txt") from None
    precision = args.precision or ("bf16-mixed" if args.device == "cuda" else "32-true")
    variants = (args.variants or DEFAULT_VARIANTS[args.device]).split(",")

    from experiments.core.assembly import build_data

    base = make_config(args, train_images=args.batch_size * (args.warmup + args.steps),
                       **{"framework": "simsiam", "trainer.precision": precision})
    data = build_data(with_options(base, {"data.batched_augment": True}))
    best: dict[str, dict] = {}

    def keep(name: str, result: dict) -> None:
        if name not in best or result["images_per_s"] > best[name]["images_per_s"]:
            best[name] = result
        print(f"{name:34s} {result['images_per_s']:8.1f} images/s")

    for _ in range(args.rounds):
        keep("lightly " + lightly.__version__, run_lightly(args, base, data, args.steps, args.warmup))
        for variant in variants:
            options = dict(variant_options(variant), **{"trainer.precision": precision})
            cfg = with_options(replace(base), options)
            keep("ours " + variant, run_ours(args, cfg, data, "simsiam", args.steps, args.warmup))
    theirs = best["lightly " + lightly.__version__]
    rows = [{"run": name, **r, "ours_over_lightly": r["images_per_s"] / theirs["images_per_s"],
             "ours_over_lightly_cpu": r["images_per_cpu_s"] / theirs["images_per_cpu_s"]} for name, r in best.items()]
    summary = {f"{name}: ours / lightly": row["ours_over_lightly"] for name, row in zip(best, rows)
               if name.startswith("ours")}
    report("vs_lightly", f"SimSiam, ours vs lightly {lightly.__version__}: {args.backbone} x{args.width}, batch "
           f"{args.batch_size}, {args.dataset}, {precision}, {args.workers} workers, {args.device}",
           ["run", "images_per_s", "ours_over_lightly", "step_s", "peak_mib", "start_mib", "added_mib", "params_m",
            "images_per_cpu_s", "ours_over_lightly_cpu"], rows, args, summary,
           notes=["ours_over_lightly: images/s over lightly's (target on CPU: >= 1.0; on an H100 >= 3)",
                  "peak_mib: CUDA allocator peak, or the process's peak resident set on CPU; start_mib: the same "
                  "at the run's start (all runs share one process, so a later run starts with what earlier ones "
                  "left resident); added_mib: peak_mib - start_mib, what the run itself added"])


if __name__ == "__main__":
    main()
