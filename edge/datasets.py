"""Named real image sets for training, evaluation and benchmarks.

Every loader returns uint8 RGB images of shape (N, size, size, 3). Nothing is
downloaded: the sets come from Debian's ``dataset-fashion-mnist`` package,
scikit-learn's bundled digits, the photos bundled inside scikit-image, or
local files.

Spec grammar (``load_images(spec, size, limit, seed)``)::

    fmnist[:train|:test][:class=K[,K...]|:class!=K[,K...]]   default split: test
    digits[:class=K[,K...]|:class!=K[,K...]]                  sklearn load_digits
    photos[:train|:test]        random square patches of scikit-image photos
    textures[:train|:test]      random square patches of brick/grass/gravel
    lfw[:faces|:nonfaces]       skimage.data.lfw_subset(), default faces
    folder:PATH                 every png/jpg/jpeg/bmp/webp in PATH, sorted
    video:PATH                  frames of a video file (cv2.VideoCapture)
    PATH                        an existing directory (folder) or file (video)

Labels: Fashion-MNIST and digits keep their class labels; photos and textures
label each patch with the index of its source image in ``PHOTO_SOURCES[split]``
(train + test concatenated for plain ``photos``) / ``TEXTURE_SOURCES``; lfw,
folder and video have no labels. Fashion-MNIST is read from ``FMNIST_DIR``
unless $PATHWATCH_FMNIST_DIR names another directory.

Splits:
  * photos:train and photos:test draw from disjoint source photos (see
    ``PHOTO_SOURCES``); plain ``photos`` uses both lists.
  * textures has only three bundled images, too few to split by image, so
    textures:train takes patches from the left half (columns < W/2) of each
    image and textures:test from the right half; plain ``textures`` uses all.
  * photos and textures yield ``limit`` patches (``DEFAULT_PATCHES`` when no
    limit is given); patch side is drawn from ``PATCH_SIDE`` before resizing
    so content scale varies. Everything is deterministic given ``seed``.

Resizing: non-square images are centre-cropped to square, then shrunk with
cv2.INTER_AREA (as the DiffPath authors advise) or enlarged with
cv2.INTER_CUBIC. Grayscale is repeated to three channels. When a set is
larger than ``limit``, a seeded permutation picks the subset (kept in source
order); videos are instead strided evenly over the file (the first ``limit``
frames when the container does not report a frame count).
"""
from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np

FMNIST_DIR = "/usr/share/datasets/fashion-mnist"
FMNIST_ENV = "PATHWATCH_FMNIST_DIR"  # overrides FMNIST_DIR (tests, other hosts)
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
DEFAULT_PATCHES = 1024
PATCH_SIDE = (48, 160)  # inclusive range of crop sides in source pixels

# Source photos bundled with scikit-image (no pooch download). The lists are
# disjoint and each mixes colour and grayscale, people/animals and objects.
PHOTO_SOURCES: dict[str, tuple[str, ...]] = {
    "train": ("astronaut", "rocket", "hubble_deep_field", "immunohistochemistry",
              "camera", "moon", "text"),
    "test": ("coffee", "chelsea", "motorcycle", "coins", "clock", "page"),
}
TEXTURE_SOURCES: tuple[str, ...] = ("brick", "grass", "gravel")

_NAMED = ("fmnist", "fmnist:train", "fmnist:test", "digits", "photos",
          "photos:train", "photos:test", "textures", "textures:train",
          "textures:test", "lfw", "lfw:nonfaces")
SPEC_HELP = ("valid: " + ", ".join(_NAMED) + "; fmnist/digits take :class=K or "
             ":class!=K (comma lists ok); or folder:PATH, video:PATH, an existing path")


@dataclass
class ImageSet:
    name: str
    images: np.ndarray  # uint8 (N, H, W, 3) RGB
    labels: np.ndarray | None


def dataset_names() -> list[str]:
    """Built-in named specs (paths come on top: folder:PATH, video:PATH)."""
    return list(_NAMED)


# The model sees pixels 0..255 linearly mapped onto [-1, 1].
PIXEL_SCALE = 127.5


def to_unit_range(pixels):
    """Float pixel values 0..255 (numpy array or torch tensor) -> [-1, 1]. The exported graph
    runs this same expression in torch, so numpy and the graph agree bit for bit."""
    return pixels / PIXEL_SCALE - 1.0


def from_unit_range(x):
    """[-1, 1] -> pixel values 0..255 (float; round and cast to get an image)."""
    return (x + 1.0) * PIXEL_SCALE


def to_model_input(images_uint8: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, 3) -> float32 (N, 3, H, W) in [-1, 1]."""
    if images_uint8.dtype != np.uint8 or images_uint8.ndim != 4 or images_uint8.shape[-1] != 3:
        raise ValueError(f"expected uint8 (N, H, W, 3), got {images_uint8.dtype} {images_uint8.shape}")
    x = to_unit_range(images_uint8.astype(np.float32))
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def load_images(spec: str, size: int, limit: int | None = None, seed: int = 0) -> ImageSet:
    """Load the image set named by ``spec`` (grammar in the module docstring)."""
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 or None, got {limit!r}")
    head, _, rest = spec.partition(":")
    if head in ("folder", "video") and rest:
        path = Path(rest).expanduser()
        return (_load_folder if head == "folder" else _load_video)(spec, path, size, limit, seed)
    loader = _LOADERS.get(head)
    if loader is not None:
        return loader(spec, rest.split(":") if rest else [], size, limit, seed)
    path = Path(spec).expanduser()
    if spec and path.is_dir():
        return _load_folder(spec, path, size, limit, seed)
    if spec and path.is_file():
        return _load_video(spec, path, size, limit, seed)
    raise ValueError(f"unknown dataset spec {spec!r}; {SPEC_HELP}")


# ---------------------------------------------------------------- helpers

def _bad(spec: str, why: str) -> ValueError:
    return ValueError(f"bad dataset spec {spec!r}: {why}; {SPEC_HELP}")


def _pick(n: int, limit: int | None, seed: int) -> np.ndarray:
    """Indices of a seeded subset of size ``limit`` (all when it fits), in order."""
    if limit is None or limit >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).permutation(n)[:limit])


def _to_uint8(img: np.ndarray) -> np.ndarray:
    if img.dtype == np.uint8:
        return img
    if img.dtype == bool:
        return img.astype(np.uint8) * 255
    if np.issubdtype(img.dtype, np.floating):  # skimage floats live in [0, 1]
        return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
    return np.clip(img, 0, 255).astype(np.uint8)


def _center_square(img: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return img[top:top + s, left:left + s]


def _prepare(img: np.ndarray, size: int) -> np.ndarray:
    """Any gray/RGB/RGBA image -> uint8 (size, size, 3): crop, resize, expand."""
    import cv2

    img = _center_square(_to_uint8(img))
    if img.ndim == 3 and img.shape[2] == 4:
        img = img[:, :, :3]  # alpha carries no scene content
    if img.shape[0] != size:
        interp = cv2.INTER_AREA if img.shape[0] > size else cv2.INTER_CUBIC
        img = cv2.resize(img, (size, size), interpolation=interp)
    if img.ndim == 2 or img.shape[2] == 1:
        img = np.repeat(img.reshape(size, size, 1), 3, axis=2)
    return img


def _stack(imgs: list[np.ndarray], size: int) -> np.ndarray:
    if not imgs:
        return np.zeros((0, size, size, 3), np.uint8)
    return np.stack([_prepare(im, size) for im in imgs])


def _split_opts(spec: str, parts: list[str], splits: tuple[str, ...]) -> tuple[str | None, dict[str, str]]:
    """Separate one optional split name from key=value / key!=value options."""
    split, opts = None, {}
    for p in parts:
        if p in splits and split is None:
            split = p
        elif "!=" in p:
            k, v = p.split("!=", 1)
            opts[k + "!"] = v
        elif "=" in p:
            k, v = p.split("=", 1)
            opts[k] = v
        else:
            raise _bad(spec, f"unexpected part {p!r}")
    return split, opts


ClassFilter = tuple[list[int], bool] | None  # (classes, negate) or no filter


def _class_filter(spec: str, opts: dict[str, str]) -> ClassFilter:
    """Parse class=K / class!=K (comma lists allowed) before any data is read."""
    unknown = set(opts) - {"class", "class!"}
    if unknown or len(opts) > 1:
        raise _bad(spec, f"options {sorted(opts)} not understood (use one class=K or class!=K)")
    if not opts:
        return None
    key, val = next(iter(opts.items()))
    try:
        classes = [int(v) for v in val.split(",")]
    except ValueError:
        raise _bad(spec, f"class value {val!r} is not an integer list") from None
    return classes, key == "class!"


def _labelled(spec: str, images: np.ndarray, labels: np.ndarray, flt: ClassFilter,
              size: int, limit: int | None, seed: int) -> ImageSet:
    """Filter by class, subsample, resize: shared by fmnist and digits."""
    idx = np.arange(len(labels))
    if flt is not None:
        idx = np.flatnonzero(np.isin(labels, flt[0]) != flt[1])
    idx = idx[_pick(len(idx), limit, seed)]
    if len(idx) == 0:
        raise _bad(spec, "the class filter leaves no images")
    return ImageSet(spec, _stack(list(images[idx]), size), labels[idx].astype(np.int64))


# ---------------------------------------------------------------- Fashion-MNIST

@lru_cache(maxsize=4)
def _fmnist_arrays(root: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Decode the idx.gz pair once per process; read-only so the cache stays intact."""
    prefix = "train" if split == "train" else "t10k"
    img_path = Path(root) / f"{prefix}-images-idx3-ubyte.gz"
    lab_path = Path(root) / f"{prefix}-labels-idx1-ubyte.gz"
    if not (img_path.is_file() and lab_path.is_file()):
        raise FileNotFoundError(f"Fashion-MNIST not found in {root}: run `apt-get install dataset-fashion-mnist`"
                                f" (or set {FMNIST_ENV})")
    with gzip.open(img_path, "rb") as f:
        raw = f.read()
    n, h, w = (int.from_bytes(raw[i:i + 4], "big") for i in (4, 8, 12))
    images = np.frombuffer(raw, np.uint8, offset=16).reshape(n, h, w)
    with gzip.open(lab_path, "rb") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    if len(labels) != n:
        raise ValueError(f"Fashion-MNIST {split}: {n} images but {len(labels)} labels in {root}")
    return images, labels


def fmnist_dir() -> str:
    """Directory holding the Fashion-MNIST idx.gz files ($PATHWATCH_FMNIST_DIR wins)."""
    return os.environ.get(FMNIST_ENV) or FMNIST_DIR


def _load_fmnist(spec: str, parts: list[str], size: int, limit: int | None, seed: int) -> ImageSet:
    split, opts = _split_opts(spec, parts, ("train", "test"))
    flt = _class_filter(spec, opts)
    images, labels = _fmnist_arrays(fmnist_dir(), split or "test")
    return _labelled(spec, images, labels, flt, size, limit, seed)


# ---------------------------------------------------------------- digits

def _load_digits(spec: str, parts: list[str], size: int, limit: int | None, seed: int) -> ImageSet:
    from sklearn.datasets import load_digits

    _, opts = _split_opts(spec, parts, ())
    flt = _class_filter(spec, opts)
    d = load_digits()
    images = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)  # values 0..16
    return _labelled(spec, images, d.target, flt, size, limit, seed)


# ---------------------------------------------------------------- photos / textures

def _skimage_image(name: str) -> np.ndarray:
    import skimage.data

    if name == "motorcycle":  # left view of the bundled stereo pair
        return skimage.data.stereo_motorcycle()[0]
    return getattr(skimage.data, name)()


@lru_cache(maxsize=None)
def _cached_source(name: str) -> np.ndarray:
    img = _to_uint8(_skimage_image(name))
    img.flags.writeable = False  # shared by every later call
    return img


def _patches(sources: list[np.ndarray], count: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` random square crops, side in PATCH_SIDE, resized to ``size``."""
    rng = np.random.default_rng(seed)
    out = np.empty((count, size, size, 3), np.uint8)
    labels = rng.integers(0, len(sources), count)
    for i, k in enumerate(labels):
        img = sources[k]
        h, w = img.shape[:2]
        side = int(rng.integers(PATCH_SIDE[0], min(PATCH_SIDE[1], h, w) + 1))
        top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        out[i] = _prepare(img[top:top + side, left:left + side], size)
    return out, labels.astype(np.int64)


def _load_photos(spec: str, parts: list[str], size: int, limit: int | None, seed: int) -> ImageSet:
    split, opts = _split_opts(spec, parts, ("train", "test"))
    if opts or len(parts) > 1:
        raise _bad(spec, "photos takes only :train or :test")
    names = PHOTO_SOURCES[split] if split else PHOTO_SOURCES["train"] + PHOTO_SOURCES["test"]
    images, labels = _patches([_cached_source(n) for n in names], limit or DEFAULT_PATCHES, size, seed)
    return ImageSet(spec, images, labels)


def _texture_region(img: np.ndarray, split: str | None) -> np.ndarray:
    # Three bundled textures are too few to split by image: split each in halves.
    half = img.shape[1] // 2
    return {"train": img[:, :half], "test": img[:, half:], None: img}[split]


def _load_textures(spec: str, parts: list[str], size: int, limit: int | None, seed: int) -> ImageSet:
    split, opts = _split_opts(spec, parts, ("train", "test"))
    if opts or len(parts) > 1:
        raise _bad(spec, "textures takes only :train or :test")
    sources = [_texture_region(_cached_source(n), split) for n in TEXTURE_SOURCES]
    images, labels = _patches(sources, limit or DEFAULT_PATCHES, size, seed)
    return ImageSet(spec, images, labels)


# ---------------------------------------------------------------- lfw

def _load_lfw(spec: str, parts: list[str], size: int, limit: int | None, seed: int) -> ImageSet:
    import skimage.data

    if parts not in ([], ["faces"], ["nonfaces"]):
        raise _bad(spec, "lfw takes only :faces or :nonfaces")
    faces = skimage.data.lfw_subset()  # first 100 are faces, last 100 are not
    faces = faces[100:] if parts == ["nonfaces"] else faces[:100]
    idx = _pick(len(faces), limit, seed)
    return ImageSet(spec, _stack(list(faces[idx]), size), None)


# ---------------------------------------------------------------- folder / video

def _load_folder(spec: str, path: Path, size: int, limit: int | None, seed: int) -> ImageSet:
    import cv2

    if not path.is_dir():
        raise ValueError(f"bad dataset spec {spec!r}: {path} is not a directory")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file())
    if not files:
        raise ValueError(f"bad dataset spec {spec!r}: no {'/'.join(IMAGE_EXTS)} files in {path}")
    images = []
    for i in _pick(len(files), limit, seed):  # decode only the chosen files
        bgr = cv2.imread(str(files[i]), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f"bad dataset spec {spec!r}: cannot decode {files[i]}")
        images.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    return ImageSet(spec, _stack(images, size), None)


def _frame_indices(count: int, limit: int | None) -> set[int] | None:
    """Evenly strided frame numbers, or None to take frames in order."""
    if count <= 0 or limit is None or limit >= count:
        return None
    return set(np.linspace(0, count - 1, limit).round().astype(int).tolist())


def _load_video(spec: str, path: Path, size: int, limit: int | None, seed: int) -> ImageSet:
    import cv2

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise ValueError(f"bad dataset spec {spec!r}: cannot open video {path}")
    wanted = _frame_indices(int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), limit)
    frames: list[np.ndarray] = []
    i = 0
    try:
        # grab() every frame and retrieve() only wanted ones: seeking is
        # unreliable for many codecs, sequential reading is not.
        while (limit is None or len(frames) < limit) and cap.grab():
            if wanted is None or i in wanted:
                ok, bgr = cap.retrieve()
                if ok:
                    frames.append(_prepare(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), size))
            i += 1
    finally:
        cap.release()
    if not frames:
        raise ValueError(f"bad dataset spec {spec!r}: no frames could be read from {path}")
    return ImageSet(spec, np.stack(frames), None)


_LOADERS: dict[str, Callable[[str, list[str], int, int | None, int], ImageSet]] = {
    "fmnist": _load_fmnist,
    "digits": _load_digits,
    "photos": _load_photos,
    "textures": _load_textures,
    "lfw": _load_lfw,
}
