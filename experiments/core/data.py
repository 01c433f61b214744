"""Datasets decoded once into uint8 tensors, multi-view SSL augmentation, and the splits.

Every dataset becomes an ``ImageSet`` (N x C x H x W uint8 images, int64 labels), so the
rest of the package never cares where images came from: scikit-learn's bundled
``digits`` (the embedded default, no download), CIFAR-10/100 and STL-10 through
torchvision (already on disk: nothing is downloaded), or any ImageFolder directory.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2 as T



@dataclass(frozen=True)
class DatasetKind:
    """What the jobs ask of a dataset: where its images come from and which augmentation defaults suit it."""

    name: str
    embedded: bool = False  # bundled with a library: no data.root
    folder: bool = False  # an ImageFolder layout under data.root (train/ and test/ with class folders)
    glyphs: bool = False  # tiny images of glyphs: a larger crop and no mirroring by default


#: the one list of datasets a config may name (``data.dataset``)
DATASETS = {d.name: d for d in (DatasetKind("digits", embedded=True, glyphs=True), DatasetKind("cifar10"),
                                DatasetKind("cifar100"), DatasetKind("stl10"), DatasetKind("imagefolder", folder=True))}


class DataError(ValueError):
    """A dataset that cannot be read: the message names what is wrong (and the first bad file)."""


def _one_line(err: BaseException) -> str:
    """A library's error message on one line (decoders and torchvision may print several)."""
    return " ".join(str(err).split()) or type(err).__name__


@dataclass
class ImageSet:
    images: torch.Tensor  # uint8, N x C x H x W
    labels: torch.Tensor  # int64, N
    classes: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: torch.Tensor) -> "ImageSet":
        return ImageSet(self.images[indices], self.labels[indices], self.classes)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def _take(data: ImageSet, limit: Optional[int], seed: int) -> ImageSet:
    if limit is None or limit >= len(data):
        return data
    return data.subset(torch.randperm(len(data), generator=_generator(seed))[:limit])


def _digits(split: str) -> ImageSet:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(bunch.images).float().mul(255.0 / 16.0).round().to(torch.uint8)
    images = images.unsqueeze(1).repeat(1, 3, 1, 1)  # grey as RGB: one code path for all datasets
    labels = torch.from_numpy(bunch.target).long()
    # A fixed 80/20 split (seed 0, per class) so every run and seed sees the same test set.
    order = torch.randperm(len(labels), generator=_generator(0))
    test = torch.zeros(len(labels), dtype=torch.bool)
    for c in range(10):
        members = order[labels[order] == c]
        test[members[: len(members) // 5]] = True
    mask = test if split == "test" else ~test
    return ImageSet(images[mask], labels[mask], [str(c) for c in range(10)])


def _torchvision(name: str, root: str, split: str) -> ImageSet:
    import torchvision.datasets as D

    try:
        if name == "stl10":
            ds = D.STL10(root, split="train" if split == "train" else "test", download=False)
            images = torch.from_numpy(ds.data)
            labels = torch.as_tensor(ds.labels).long()
            classes = list(ds.classes)
        else:
            cls = D.CIFAR10 if name == "cifar10" else D.CIFAR100
            ds = cls(root, train=split == "train", download=False)
            images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
            labels = torch.as_tensor(ds.targets).long()
            classes = list(ds.classes)
    except RuntimeError as err:  # torchvision: "Dataset not found or corrupted."
        raise DataError(f"{name} not found under {root!r} (nothing is downloaded: put the dataset there "
                        f"first): {_one_line(err)}") from None
    except Exception as err:  # noqa: BLE001 - a truncated or foreign file fails in pickle or numpy
        raise DataError(f"{name} under {root!r} cannot be read: {type(err).__name__}: {_one_line(err)}") from None
    return ImageSet(images, labels, classes)


def _imagefolder(root: str, split: str, limit: Optional[int], seed: int, image_size: Optional[int]) -> ImageSet:
    from torchvision.datasets import ImageFolder
    from torchvision.io import ImageReadMode, decode_image

    folder = Path(root) / split
    if not folder.is_dir():
        raise DataError(f"imagefolder dataset needs {folder} (an ImageFolder layout with train/ and test/ splits)")
    try:
        listing = ImageFolder(str(folder), loader=lambda p: p)
    except (FileNotFoundError, RuntimeError) as err:  # no class folders, or none holds an image file
        raise DataError(f"no images under {folder}: {_one_line(err)}") from None
    if split == "train" and len(listing.classes) < 2:  # every network would score 1.000
        raise DataError(f"{folder} has {len(listing.classes)} class folder ({', '.join(listing.classes)}); the kNN "
                        f"and linear evaluations need at least two classes (one folder per class)")
    samples = listing.samples
    if limit is not None and limit < len(samples):
        samples = [samples[i] for i in torch.randperm(len(samples), generator=_generator(seed))[:limit].tolist()]
    images, labels = [], []
    resize = T.Resize((image_size, image_size), antialias=True) if image_size else None
    for path, label in samples:
        try:
            image = decode_image(path, mode=ImageReadMode.RGB)
        except Exception as err:  # noqa: BLE001 - any decoder failure names the file
            raise DataError(f"cannot read image {path}: {_one_line(err)}") from None
        if resize is not None and tuple(image.shape[-2:]) != (image_size, image_size):
            image = resize(image)
        if images and image.shape != images[0].shape:
            raise DataError(f"images under {folder} differ in size ({path} is {tuple(image.shape[-2:])}, "
                            f"{samples[0][0]} is {tuple(images[0].shape[-2:])}): set data.image_size to resize them")
        images.append(image)
        labels.append(label)
    return ImageSet(torch.stack(images), torch.tensor(labels, dtype=torch.long), list(listing.classes))


def load_images(dataset: str, split: str, root: Optional[str] = None, limit: Optional[int] = None,
                seed: int = 0, image_size: Optional[int] = None) -> ImageSet:
    """Decode one split (``train`` or ``test``) of a dataset into memory, at most ``limit`` images."""
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    if DATASETS[dataset].embedded:
        data = _take(_digits(split), limit, seed)
    else:
        if not root:
            raise DataError(f"dataset {dataset!r} needs data.root (a path on disk)")
        if not Path(root).exists():
            raise DataError(f"dataset path {root!r} does not exist")
        if DATASETS[dataset].folder:
            return _imagefolder(root, split, limit, seed, image_size)
        data = _take(_torchvision(dataset, root, split), limit, seed)
    if image_size and tuple(data.images.shape[-2:]) != (image_size, image_size):
        data = ImageSet(T.functional.resize(data.images, [image_size, image_size], antialias=True),
                        data.labels, data.classes)
    if len(data) == 0:
        raise DataError(f"dataset {dataset!r} split {split!r} is empty")
    return data


def channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in [0, 1] units, for Normalize."""
    x = images.float().div(255.0)
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return mean.tolist(), std.tolist()


def split_indices(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random (weight, held-out) split of ``range(n)``; the held-out part is ``fraction`` of it."""
    order = torch.randperm(n, generator=_generator(seed))
    n_held = int(round(n * fraction))
    return order[n_held:], order[:n_held]


def plain_view(mean, std) -> Callable[[torch.Tensor], torch.Tensor]:
    """The evaluation view: no augmentation, only scaling and normalisation."""
    return T.Compose([T.ToDtype(torch.float32, scale=True), T.Normalize(mean, std)])


class MultiViewDataset(Dataset):
    """Each item is a tuple of views of one image, one per transform, then its label if ``labels`` is given."""

    def __init__(self, images: torch.Tensor, transforms: Sequence[Callable], labels: Optional[torch.Tensor] = None):
        self.images = images
        self.transforms = list(transforms)
        self.labels = labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index):
        if isinstance(index, tuple):  # (index, sample seed) from SeededSampler: views from their own seed
            index, seed = index
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(seed)  # CPU only (torch.manual_seed also queues CUDA seeding)
                views = tuple(t(self.images[index]) for t in self.transforms)
        else:
            views = tuple(t(self.images[index]) for t in self.transforms)
        return views if self.labels is None else views + (self.labels[index],)


class SeededSampler(torch.utils.data.Sampler):
    """Each epoch's order and every sample's augmentation seed, a pure function of (seed, stream, epoch).

    Yields ``(index, sample_seed)``; ``MultiViewDataset`` draws that sample's views from its
    own seed. So what a run sees never depends on how many random numbers anything else
    drew, nor on the worker count, and a resumed run sees exactly the data an uninterrupted
    one would: ``resume_at(epoch, samples_done)`` skips what that epoch already served.
    Lightning calls ``set_epoch`` (also through its DDP wrapper, which shards our order).
    """

    def __init__(self, n: int, seed: int, stream: int = 0, shuffle: bool = True):
        self.n, self.seed, self.stream, self.shuffle = int(n), int(seed), int(stream), shuffle
        self.epoch = 0
        self._resume: Optional[tuple[int, int]] = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def resume_at(self, epoch: int, samples_done: int) -> None:
        self._resume = (int(epoch), int(samples_done))

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        import numpy as np

        state = np.random.SeedSequence([self.seed, self.stream, self.epoch]).generate_state(1, np.uint64)[0]
        g = torch.Generator().manual_seed(int(state) >> 1)
        order = torch.randperm(self.n, generator=g) if self.shuffle else torch.arange(self.n)
        seeds = torch.randint(0, 2 ** 62, (self.n,), generator=g)
        start = 0
        if self._resume is not None and self._resume[0] == self.epoch:
            start = min(self._resume[1], self.n)
            self._resume = None
        for i in range(start, self.n):
            yield int(order[i]), int(seeds[i])


def normalized(data: ImageSet, mean, std) -> torch.Tensor:
    """All images as one normalised float tensor (for kNN banks and linear probes)."""
    return plain_view(mean, std)(data.images)
