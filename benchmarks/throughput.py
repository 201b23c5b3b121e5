"""Throughput of the three hot paths, this runner's code against a plain PyTorch baseline, on the
same model, data and machine, in the same process (repeats interleaved, so drift hits both):

- train: images/s of SGD steps. Baseline: the peers' way, a `DataLoader` (`workers` processes)
  over a dataset that returns PIL images through torchvision's RandomCrop(32, 4) +
  RandomHorizontalFlip + ToTensor, fp32, `loss.item()` every step. Ours: `runner.train.fit` over
  `data.loader.Batches` (uint8 images resident on the device, crop + flip on the device), with the
  precision and memory format given (default `auto`: bf16 autocast where the device computes
  bf16 natively, CUDA or a CPU with AVX512-BF16 / AMX, fp32 elsewhere: on a 2-core AMD EPYC with
  AVX512-BF16 a bf16 ResNet-18 step ran 2.6x as fast as an fp32 one, on one with AVX2 only 13x
  slower; channels_last unless --no-channels-last).
- infer: images/s of logits on the test images. Baseline: a DataLoader with ToTensor, batch 128,
  persistent workers started before the clock, `torch.no_grad`, each batch's output copied to the
  host. Ours: `runner.evaluate.predict` at the runner's default batch (`runner.trained.EVAL_BATCH`:
  1024 on CUDA, 128 on a CPU), `inference_mode`, data and outputs on the device, fp32.
- pgd: forget samples/s of AMUN's adversarial search (L2 PGD-50, step 0.1 eps, eps doubled until the
  prediction flips). Baseline: per batch, every still-correct sample runs all 50 steps of a round
  (the torchattacks pattern), then the unflipped ones continue at 2 eps from where they are. Ours:
  `attacks.pgd.pgd_doubling`, which stops a sample at its first flipped iterate and refills its
  slot, on the model in ours' memory format (the runner's model is in its recipe's). Both fp32. Also
  reports model calls per sample for both (PGD on a model first trained for `pgd_epochs`).

Each measurement is `repeats` runs after `warmup` steps; the JSON (outputs/bench/throughput.json)
holds every run, the medians, the spread and the ratio of medians.

    python -m benchmarks.throughput [--device cuda] [--data synthetic|<cifar10-jpeg path>] ...
"""

from __future__ import annotations

import argparse
import copy
import logging

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms as T

from attacks.pgd import pgd_doubling
from benchmarks.common import MODELS, cifar_shaped, device_name, summary, timed, write
from data.loader import Augment, Batches
from runner.evaluate import predict
from runner.optim import sgd
from runner.train import fit
from runner.trained import EVAL_BATCH, native_precision

WARMUP = 2


class PlainImages(torch.utils.data.Dataset):
    """torchvision.datasets.CIFAR10's item path: an HWC uint8 array -> PIL image -> transform."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform) -> None:
        self.x, self.y, self.transform = x.permute(0, 2, 3, 1).numpy(), y.tolist(), transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.transform(Image.fromarray(self.x[i])), self.y[i]


def _loader(x, y, transform, batch_size: int, workers: int, shuffle: bool, device,
            persistent: bool = False) -> object:
    return torch.utils.data.DataLoader(
        PlainImages(x, y, transform), batch_size=batch_size, shuffle=shuffle, num_workers=workers,
        pin_memory=device.type == "cuda", persistent_workers=persistent and workers > 0)


def plain_train(model, x, y, *, steps: int, batch_size: int, workers: int, device) -> float:
    aug = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor()])
    it = iter(_loader(x, y, aug, batch_size, workers, True, device))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    model.train()
    losses = []

    def step():
        xb, yb = next(it)
        xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())

    for _ in range(WARMUP):
        step()
    return timed(lambda: [step() for _ in range(steps)], device)


def our_train(model, x_dev, y_dev, *, steps: int, batch_size: int, precision: str,
              channels_last: bool, device) -> float:
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = sgd(model, lr=0.01, momentum=0.9, weight_decay=5e-4)

    def batches(n_steps: int) -> Batches:
        return Batches(x_dev[:n_steps * batch_size], y_dev[:n_steps * batch_size],
                       batch_size=batch_size, shuffle=True, seed=0, drop_last=True,
                       augment=Augment(crop_pad=4, flip=True), channels_last=channels_last)

    fit(model, batches(WARMUP), epochs=1, optimizer=opt, precision=precision)
    timed_batches = batches(steps)
    return timed(lambda: fit(model, timed_batches, epochs=1, optimizer=opt, precision=precision),
                 device)


def plain_infer(model, loader, *, device) -> float:
    model.eval()

    def run():
        outs = []
        with torch.no_grad():
            for xb, _ in loader:
                outs.append(F.softmax(model(xb.to(device)), 1).cpu())
        return torch.cat(outs)

    return timed(run, device)


def our_infer(model, x_dev, *, channels_last: bool, device) -> float:
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return timed(lambda: predict(model, x_dev, EVAL_BATCH[device.type]), device)


def plain_pgd(model, x, y, *, eps_init: float, steps: int, max_doublings: int,
              batch_size: int) -> int:
    """The per-round pattern (see the module docstring); returns the model calls (samples). Each
    round continues from the last iterate, as ours does, so only the early stop differs."""
    model.eval()
    calls = 0
    for start in range(0, len(x), batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        left, eps, current = torch.arange(len(xb), device=x.device), eps_init, xb.clone()
        for _ in range(max_doublings + 1):
            x0, y0 = xb[left], yb[left]
            adv = current[left]
            for _ in range(steps):
                adv.requires_grad_(True)
                loss = F.cross_entropy(model(adv), y0)
                grad, = torch.autograd.grad(loss, adv)
                calls += len(adv)
                norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None, None]
                adv = adv.detach() + 0.1 * eps * grad / norm
                delta = adv - x0
                scale = (eps / delta.flatten(1).norm(dim=1).clamp_min(1e-12)).clamp(max=1.0)
                adv = (x0 + delta * scale[:, None, None, None]).clamp(0, 1)
            with torch.no_grad():
                flipped = model(adv).argmax(1) != y0
            calls += len(adv)
            current[left] = adv.detach()
            left, eps = left[~flipped], eps * 2
            if len(left) == 0:
                break
    return calls


def _pairs(repeats: int, plain, ours) -> tuple[list[float], list[float]]:
    a, b = [], []
    for _ in range(repeats):  # interleaved, so slow drift of the machine hits both
        a.append(plain())
        b.append(ours())
    return a, b


def _entry(unit: str, n: int, plain_s: list[float], our_s: list[float], **extra) -> dict:
    plain_rate, our_rate = [n / s for s in plain_s], [n / s for s in our_s]
    p, o = summary(plain_rate), summary(our_rate)
    return {"unit": unit, "items": n, "plain": p, "ours": o, "ratio": o["median"] / p["median"],
            **extra}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--data", default="synthetic", help="synthetic, or the CIFAR-10 JPEG archive")
    ap.add_argument("--models", default="small_cnn,resnet18")
    ap.add_argument("--pgd-models", default="small_cnn")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10, help="timed training steps per run")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers of the baseline")
    ap.add_argument("--infer-images", type=int, default=1000)
    ap.add_argument("--pgd-images", type=int, default=64)
    ap.add_argument("--pgd-epochs", type=int, default=3)
    ap.add_argument("--eps-init", type=float, default=0.05)
    ap.add_argument("--precision", default="auto",
                    help="ours: fp32, bf16, or auto (bf16 where the device has it natively)")
    ap.add_argument("--no-channels-last", action="store_true")
    ap.add_argument("--name", default="throughput")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    precision = native_precision(device) if args.precision == "auto" else args.precision
    channels_last = not args.no_channels_last
    n_train = max((WARMUP + args.steps) * args.batch_size, args.pgd_images * 4)
    x, y, xt, yt = cifar_shaped(args.data, n_train, args.infer_images)
    x_dev, y_dev, xt_dev = x.to(device), y.to(device), xt.to(device)
    record = {"device": device_name(device), "data": args.data, "settings": vars(args),
              "ours": {"precision": precision, "channels_last": channels_last},
              "train": {}, "infer": {}, "pgd": {}}
    for name in args.models.split(","):
        torch.manual_seed(0)
        base = MODELS[name]().to(device)
        n = args.steps * args.batch_size
        a, b = _pairs(args.repeats,
                      lambda: plain_train(copy.deepcopy(base), x, y, steps=args.steps,
                                          batch_size=args.batch_size, workers=args.workers,
                                          device=device),
                      lambda: our_train(copy.deepcopy(base), x_dev, y_dev, steps=args.steps,
                                        batch_size=args.batch_size, precision=precision,
                                        channels_last=channels_last, device=device))
        record["train"][name] = _entry("images/s", n, a, b, batch_size=args.batch_size)
        loader = _loader(xt, yt, T.ToTensor(), 128, args.workers, False, device, persistent=True)
        plain_infer(base, loader, device=device)  # untimed: the loader's first pass
        a, b = _pairs(args.repeats,
                      lambda: plain_infer(base, loader, device=device),
                      lambda: our_infer(copy.deepcopy(base), xt_dev, channels_last=channels_last,
                                        device=device))
        record["infer"][name] = _entry("images/s", len(xt), a, b)
    for name in args.pgd_models.split(","):
        record["pgd"][name] = _pgd_entry(name, args, x_dev, y_dev, device, channels_last)
    path = write(args.name, record)
    _print(record, path)
    return record


def _pgd_entry(name: str, args, x_dev, y_dev, device, channels_last: bool) -> dict:
    torch.manual_seed(0)
    model = MODELS[name]().to(device)
    opt = sgd(model, lr=0.05, momentum=0.9, weight_decay=5e-4)
    fit(model, Batches(x_dev, y_dev, batch_size=128, shuffle=True, seed=0), epochs=args.pgd_epochs,
        optimizer=opt)
    with torch.no_grad():
        right = (predict(model, x_dev, 1024).argmax(1) == y_dev).nonzero().flatten()
    pick = right[:args.pgd_images]
    xf, yf = x_dev[pick].float() / 255, y_dev[pick]
    kw = dict(eps_init=args.eps_init, steps=50, max_doublings=10, batch_size=args.batch_size)
    calls = {}
    ours_model = copy.deepcopy(model)
    if channels_last:
        ours_model = ours_model.to(memory_format=torch.channels_last)

    def plain():
        calls["plain"] = plain_pgd(model, xf, yf, **kw)

    def ours():
        calls["ours"] = pgd_doubling(ours_model, xf, yf, norm="l2", step_ratio=0.1,
                                     **kw).model_calls

    a, b = _pairs(args.repeats, lambda: timed(plain, device), lambda: timed(ours, device))
    return _entry("samples/s", len(pick), a, b, eps_init=args.eps_init,
                  channels_last=channels_last,
                  model_calls_per_sample={k: v / len(pick) for k, v in calls.items()})


def _print(record: dict, path) -> None:
    print(f"device: {record['device']}; ours: {record['ours']}")
    print(f"{'path':<7} {'model':<10} {'plain (median, min-max)':>30} {'ours':>30} {'ratio':>6}")
    for kind in ("train", "infer", "pgd"):
        for model, e in record[kind].items():
            cols = [f"{e[k]['median']:9.1f} ({e[k]['min']:.1f}-{e[k]['max']:.1f})"
                    for k in ("plain", "ours")]
            print(f"{kind:<7} {model:<10} {cols[0]:>30} {cols[1]:>30} {e['ratio']:5.2f}x"
                  f"  {e['unit']}")
            if "model_calls_per_sample" in e:
                print(f"{'':<18} model calls per sample: {e['model_calls_per_sample']}")
    print(f"written: {path}")


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main()
