"""Every GPU path of the package in one short run, with the side-by-side figures, into one JSON.

    python -m benchmarks.gpu_check [--output benchmarks/results/gpu_check.json] [--budget-seconds 450]
    python -m benchmarks.gpu_check --dry-run --output /tmp/gpu_check.json   # every step, tiny, on CPU

A GPU machine is lent for minutes, so the whole check is one prepared command. Its steps, in order:
the packages (first, so a machine without nni says so in one line before anything else), the machine,
a head search on the GPU (DARTS with the fast architecture step, per-image views), the same with views
made on the GPU from uint8 batches (``data.batched_augment``), in bf16 (``trainer.precision:
bf16-mixed``) and under ``torch.compile`` (``trainer.compile``), a retrain of the searched
architecture, a short SPOS backbone search, a search under NCCL DDP when two or more GPUs are
present, and the side-by-side figures against lightly (``benchmarks.vs_lightly --width 1
--batch-size 512``) and ``benchmarks.throughput``. Each step's status (ok, failed with its error,
or skipped and why), seconds and figures go into the JSON, written after every step so a run cut
short still leaves what it did. A step that would start past ``--budget-seconds`` is skipped.

``--dry-run`` runs every step at a tiny size on CPU and skips what needs CUDA (bf16, compile, NCCL)
with that reason in the JSON; it is the check's test. All runs use scikit-learn's digits (no data
to carry) except the two benchmark scripts, which take CIFAR-10 when it is present.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]

DEFAULT_OUTPUT = ROOT / "benchmarks" / "results" / "gpu_check.json"
#: import name -> how to install it; nni is not on the GPU machine's image (the lead carries its wheels)
REQUIRED = {"torch": "pip install torch", "torchvision": "pip install torchvision",
            "pytorch_lightning": "pip install pytorch-lightning", "yaml": "pip install pyyaml",
            "rich": "pip install rich", "nni": "pip install the nni 3.0 wheels (pip install nni-3.0*.whl)",
            "sklearn": "pip install scikit-learn", "scipy": "pip install scipy"}
OPTIONAL = {"lightly": "pip install -r benchmarks/requirements-lightly.txt (only for the vs_lightly step)"}


class Skipped(Exception):
    """A step that cannot run here; its message is the reason written to the JSON."""


def missing_packages(names: dict[str, str]) -> dict[str, str]:
    """The packages of ``names`` that cannot be imported here, with how to install each."""
    return {name: how for name, how in names.items() if importlib.util.find_spec(name) is None}


def describe_machine() -> dict:
    import torch

    info = {"python": sys.version.split()[0], "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "cuda_runtime": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "gpus": [{"name": torch.cuda.get_device_name(i),
                      "memory_gib": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1),
                      "capability": ".".join(map(str, torch.cuda.get_device_capability(i)))}
                     for i in range(torch.cuda.device_count())],
            "bf16_supported": bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported()),
            "nccl_available": bool(torch.distributed.is_available() and torch.distributed.is_nccl_available())}
    for module in ("torchvision", "pytorch_lightning", "nni", "lightly"):
        if importlib.util.find_spec(module) is not None:
            info[module] = getattr(__import__(module), "__version__", "?")
    from experiments.studies.kit import cpu_model

    cpu = cpu_model()
    if cpu is not None:
        info["cpu"] = cpu
    return info


class Check:
    """The steps, their sizes (``dry``: tiny on CPU) and the record they fill."""

    def __init__(self, dry: bool, work: Path, budget_seconds: float):
        import torch

        self.dry, self.work, self.budget = dry, work, budget_seconds
        self.cuda = torch.cuda.is_available() and not dry
        self.gpus = torch.cuda.device_count() if self.cuda else 0
        self.start = time.perf_counter()

    # --- sizes ---------------------------------------------------------------------------------
    def search_overrides(self, out: Path, **extra) -> list[str]:
        if self.dry:
            size = {"data.batch_size": 32, "data.train_subset": 192, "data.test_subset": 100,
                    "model.backbone_width": 0.0625, "model.head_width": 0.0625, "search.epochs": 1,
                    "train.epochs": 1, "evaluation.knn_k": 5, "evaluation.linear_epochs": 2}
        else:
            size = {"data.batch_size": 256, "model.backbone_width": 0.5, "model.head_width": 0.5, "search.epochs": 3,
                    "train.epochs": 3, "evaluation.linear_epochs": 20}
        values = {"output_dir": str(out), "search.warmup_epochs": 0, "search.fast_arch_step": True,
                  "search.collapse_threshold": 0.0, "train.collapse_threshold": 0.0, "trainer.progress_bar": False,
                  "trainer.accelerator": "gpu" if self.cuda else "cpu", **size, **extra}
        return [item for key, value in values.items() for item in ("--set", f"{key}={json.dumps(value)}")]

    def benchmark_arguments(self, name: str, output: Path) -> list[str]:
        device = ["--device", "cuda" if self.cuda else "cpu"]
        if self.dry:
            tiny = ["--dataset", "digits", "--width", "0.0625", "--batch-size", "16", "--steps", "1", "--warmup", "1"]
            extra = {"vs_lightly": [], "throughput": ["--frameworks", "simsiam", "--variants", "per-image,batched"]}
            return [*tiny, *device, *extra[name], "--output", str(output)]
        full = {"vs_lightly": ["--width", "1", "--batch-size", "512"], "throughput": []}
        return [*full[name], *device, "--output", str(output)]

    # --- the steps -----------------------------------------------------------------------------
    def cli(self, *argv: str) -> dict:
        from experiments.cli import main

        code = main(list(argv))
        if code:
            raise RuntimeError(f"python -m experiments {' '.join(argv[:1])} exited with status {code}")
        return {}

    def search(self, name: str, **extra) -> Callable[[], dict]:
        def step() -> dict:
            out = self.work / name
            self.cli("search", "--config", str(ROOT / "configs" / "digits_simsiam.yml"), "--overwrite",
                     *self.search_overrides(out, **extra))
            return architecture_figures(out / "best_architecture.json")
        return step

    def needs_cuda(self, what: str, step: Callable[[], dict]) -> Callable[[], dict]:
        def guarded() -> dict:
            if not self.cuda:
                raise Skipped(f"{what} needs CUDA ({'dry run on CPU' if self.dry else 'no CUDA device here'})")
            return step()
        return guarded

    def retrain(self) -> dict:
        arch = self.work / "search_gpu" / "best_architecture.json"
        if not arch.is_file():
            raise Skipped("no architecture: the search_gpu step did not finish")
        out = self.work / "retrain"
        extra = {"data.batched_augment": True}
        if self.cuda:
            extra["trainer.precision"] = "bf16-mixed"
        self.cli("retrain", "--config", str(ROOT / "configs" / "digits_simsiam.yml"), "--arch", str(arch),
                 "--overwrite", *self.search_overrides(out, **extra))
        return json.loads((out / "retrain_results.json").read_text()).get("metrics", {})

    def backbone_search(self) -> dict:
        out = self.work / "backbone_search"
        extra = {"backbone_search.trials": 4 if self.dry else 16, "backbone_search.population": 4,
                 "backbone_search.score_images": 100 if self.dry else 700}
        self.cli("backbone-search", "--config", str(ROOT / "configs" / "digits_backbone_spos.yml"), "--overwrite",
                 *self.search_overrides(out, **{**extra, "model.backbone_width": 0.125 if self.dry else 0.5}))
        return architecture_figures(out / "best_architecture.json")

    def ddp(self) -> dict:
        if self.gpus < 2:
            raise Skipped(f"NCCL DDP needs two or more CUDA devices (found {self.gpus}; "
                          f"{'dry run on CPU' if self.dry else 'one GPU'}); tests/test_ddp.py covers DDP on CPU")
        out = self.work / "ddp"
        argv = [sys.executable, "-m", "experiments", "search", "--config", str(ROOT / "configs" / "digits_simsiam.yml"),
                "--overwrite", *self.search_overrides(out, **{"trainer.strategy": "ddp", "trainer.devices": 2,
                                                              "data.batched_augment": True})]
        proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)  # Lightning relaunches it
        if proc.returncode:
            raise RuntimeError(f"DDP search exited with status {proc.returncode}: {proc.stderr[-1500:]}")
        return {**architecture_figures(out / "best_architecture.json"), "devices": 2, "backend": "nccl"}

    def benchmark(self, name: str) -> Callable[[], dict]:
        def step() -> dict:
            if name == "vs_lightly" and missing_packages(OPTIONAL):
                raise Skipped(f"lightly is not installed ({OPTIONAL['lightly']})")
            import importlib

            output = self.work / f"{name}.json"
            importlib.import_module(f"benchmarks.{name}").main(self.benchmark_arguments(name, output))
            record = json.loads(output.read_text())
            return {"command": f"python -m benchmarks.{name} {' '.join(self.benchmark_arguments(name, output))}",
                    "rows": record.get("rows")}
        return step

    def steps(self) -> list[tuple[str, str, Callable[[], dict]]]:
        return [
            ("search_gpu", "DARTS head search, fast architecture step, per-image views", self.search("search_gpu")),
            ("search_batched_views", "views made on the device from uint8 batches (data.batched_augment)",
             self.search("search_batched_views", **{"data.batched_augment": True})),
            ("search_bf16", "bf16 mixed precision (trainer.precision: bf16-mixed)",
             self.needs_cuda("bf16-mixed", self.search("search_bf16", **{"trainer.precision": "bf16-mixed"}))),
            ("search_compile", "torch.compile of the backbone (trainer.compile)",
             self.needs_cuda("torch.compile", self.search("search_compile", **{"trainer.compile": True}))),
            ("retrain", "retrain of search_gpu's architecture (batched views, bf16 on CUDA)", self.retrain),
            ("backbone_search", "short SPOS backbone search over NAS-Bench-Macro's space", self.backbone_search),
            ("ddp_nccl", "head search under DDP on two GPUs (NCCL)", self.ddp),
            ("vs_lightly", "side by side with lightly", self.benchmark("vs_lightly")),
            ("throughput", "training throughput per framework and view variant", self.benchmark("throughput")),
        ]

    def run_step(self, name: str, what: str, step: Callable[[], dict]) -> dict:
        elapsed = time.perf_counter() - self.start
        if elapsed > self.budget:
            return {"step": name, "what": what, "status": "skipped",
                    "reason": f"over the time budget ({elapsed:.0f} s > --budget-seconds {self.budget:.0f})"}
        print(f"== {name}: {what}", flush=True)
        started = time.perf_counter()
        try:
            result = {"status": "ok", "figures": step()}
        except Skipped as why:
            result = {"status": "skipped", "reason": str(why)}
        except Exception as err:  # one failing path must not hide the others
            result = {"status": "failed", "error": f"{type(err).__name__}: {err}",
                      "traceback": traceback.format_exc()[-3000:]}
        finally:
            release_device_memory()
        print(f"   {result['status']}: {result.get('reason') or result.get('error') or ''}", flush=True)
        return {"step": name, "what": what, **result, "seconds": round(time.perf_counter() - started, 2)}


def architecture_figures(path: Path) -> dict:
    record = json.loads(path.read_text())
    return {"architecture": record.get("architecture"), "metrics": record.get("metrics"),
            "status": record.get("status")}


def release_device_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="every step at a tiny size on CPU; CUDA-only steps skipped")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    p.add_argument("--workdir", type=Path, default=None, help="run directories (default: a temporary folder)")
    p.add_argument("--budget-seconds", type=float, default=450.0, help="no step starts after this many seconds")
    args = p.parse_args(argv)
    command = "python -m benchmarks.gpu_check " + " ".join(argv if argv is not None else sys.argv[1:])
    record: dict = {"benchmark": "gpu_check", "command": command, "dry_run": args.dry_run, "steps": []}
    missing = missing_packages(REQUIRED)
    record["packages"] = {"missing": missing, "optional_missing": missing_packages(OPTIONAL)}
    if missing:
        record["steps"].append({"step": "packages", "status": "failed", "error": f"missing: {', '.join(missing)}"})
        write(args.output, record)
        print(f"error: missing packages: {'; '.join(f'{n} ({how})' for n, how in missing.items())}", file=sys.stderr)
        return 2
    record["steps"].append({"step": "packages", "status": "ok"})

    from experiments import nni_compat

    nni_compat.apply()  # before anything imports NNI
    record["machine"] = describe_machine()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as scratch:
        check = Check(args.dry_run, args.workdir or Path(scratch), args.budget_seconds)
        if not check.cuda and not args.dry_run:
            print("error: no CUDA device here; run with --dry-run for the CPU check", file=sys.stderr)
            return 2
        for name, what, step in check.steps():
            record["steps"].append(check.run_step(name, what, step))
            record["seconds"] = round(time.perf_counter() - started, 1)
            write(args.output, record)
    failed = [s["step"] for s in record["steps"] if s["status"] == "failed"]
    print(f"written: {args.output} ({record['seconds']} s; failed: {', '.join(failed) or 'none'})")
    return 1 if failed else 0


def write(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str))
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
