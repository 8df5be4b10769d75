"""Offline tests for edge.datasets: named sets, filters, splits, folder/video."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from pathwatch.edge import datasets
from pathwatch.edge.datasets import ImageSet, dataset_names, load_images, to_model_input

SIZE = 32
HAVE_FMNIST = (Path(datasets.fmnist_dir()) / "t10k-images-idx3-ubyte.gz").is_file()
needs_fmnist = pytest.mark.skipif(not HAVE_FMNIST, reason="apt-get install dataset-fashion-mnist")
NAMED = [pytest.param(n, marks=needs_fmnist) if n.startswith("fmnist") else n for n in dataset_names()]


def _check(ds: ImageSet, n: int | None = None) -> None:
    assert ds.images.dtype == np.uint8
    assert ds.images.ndim == 4 and ds.images.shape[1:] == (SIZE, SIZE, 3)
    assert n is None or len(ds.images) == n
    assert ds.images.max() > ds.images.min()  # not blank
    if ds.labels is not None:
        assert len(ds.labels) == len(ds.images)


@pytest.mark.parametrize("spec", NAMED)
def test_named_sets_shapes(spec: str) -> None:
    ds = load_images(spec, SIZE, limit=40, seed=0)
    _check(ds, 40)
    assert ds.name == spec
    x = to_model_input(ds.images)
    assert x.dtype == np.float32 and x.shape == (40, 3, SIZE, SIZE)
    assert -1.0 <= x.min() and x.max() <= 1.0


def test_to_model_input_values() -> None:
    img = np.array([0, 255, 127], np.uint8).reshape(1, 1, 1, 3)
    x = to_model_input(img)
    assert x.shape == (1, 3, 1, 1)
    np.testing.assert_allclose(x.ravel(), [-1.0, 1.0, 127 / 127.5 - 1], atol=1e-6)
    with pytest.raises(ValueError):
        to_model_input(img.astype(np.float32))


@needs_fmnist
def test_fmnist_splits_and_class_filters() -> None:
    assert len(load_images("fmnist", 28).images) == 10000  # default split is test
    assert len(load_images("fmnist:train", 28, limit=5).images) == 5
    only3 = load_images("fmnist:test:class=3", SIZE)
    assert len(only3.images) == 1000 and set(only3.labels.tolist()) == {3}
    not3 = load_images("fmnist:test:class!=3", SIZE, limit=500)
    assert len(not3.images) == 500 and 3 not in set(not3.labels.tolist())
    pair = load_images("fmnist:train:class=1,7", SIZE, limit=100)
    assert set(pair.labels.tolist()) <= {1, 7}


@needs_fmnist
def test_fmnist_native_size_is_raw_pixels() -> None:
    raw, labels = datasets._fmnist_arrays(datasets.fmnist_dir(), "test")
    ds = load_images("fmnist:test", 28, limit=3, seed=4)
    idx = datasets._pick(len(raw), 3, 4)
    np.testing.assert_array_equal(ds.images[..., 0], raw[idx])
    np.testing.assert_array_equal(ds.images[..., 0], ds.images[..., 2])  # gray repeated
    np.testing.assert_array_equal(ds.labels, labels[idx])


def test_fmnist_missing_files_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(datasets.FMNIST_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_images("fmnist", SIZE)


def test_digits_scaled_and_filtered() -> None:
    ds = load_images("digits:class=0", 8)
    assert set(ds.labels.tolist()) == {0} and ds.images.max() == 255
    rest = load_images("digits:class!=0", SIZE, limit=50)
    _check(rest, 50)
    assert 0 not in set(rest.labels.tolist())


def test_photo_sources_disjoint_and_labels_point_into_them() -> None:
    train, test = datasets.PHOTO_SOURCES["train"], datasets.PHOTO_SOURCES["test"]
    assert not set(train) & set(test)
    sources = [datasets._cached_source(n) for n in train + test]
    for i, a in enumerate(sources):  # no source photo is repeated under another name
        for b in sources[i + 1:]:
            assert a.shape != b.shape or not np.array_equal(a, b)
    tr = load_images("photos:train", SIZE, limit=200)
    te = load_images("photos:test", SIZE, limit=200)
    assert set(tr.labels.tolist()) <= set(range(len(train)))
    assert set(te.labels.tolist()) <= set(range(len(test)))
    assert len(set(te.labels.tolist())) > 1  # draws from several photos
    # no test patch is byte-identical to any train patch
    tr_bytes = {im.tobytes() for im in tr.images}
    assert not any(im.tobytes() in tr_bytes for im in te.images)


def test_textures_train_test_use_disjoint_halves() -> None:
    img = datasets._cached_source("brick")
    left = datasets._texture_region(img, "train")
    right = datasets._texture_region(img, "test")
    assert left.shape[1] + right.shape[1] == img.shape[1]
    np.testing.assert_array_equal(np.concatenate([left, right], axis=1), img)
    _check(load_images("textures:test", SIZE, limit=10))


def test_patch_scale_varies() -> None:
    # On a horizontal ramp (value = column) a patch's value span equals its side.
    ramp = np.tile(np.arange(256, dtype=np.uint8), (256, 1))
    images, labels = datasets._patches([ramp], 200, 48, seed=3)
    spans = images[:, :, :, 0].max(axis=(1, 2)).astype(int) - images[:, :, :, 0].min(axis=(1, 2))
    lo, hi = datasets.PATCH_SIDE
    assert spans.min() >= lo - 4 and spans.max() <= hi
    assert spans.max() - spans.min() > (hi - lo) // 2  # content scale really varies
    assert (labels == 0).all()


@pytest.mark.parametrize("spec", ["photos", "textures:train", pytest.param("fmnist:train", marks=needs_fmnist), "lfw"])
def test_determinism_by_seed(spec: str) -> None:
    a = load_images(spec, SIZE, limit=20, seed=1)
    b = load_images(spec, SIZE, limit=20, seed=1)
    c = load_images(spec, SIZE, limit=20, seed=2)
    np.testing.assert_array_equal(a.images, b.images)
    assert not np.array_equal(a.images, c.images)


def test_lfw_faces_and_nonfaces_differ() -> None:
    faces = load_images("lfw", SIZE)
    other = load_images("lfw:nonfaces", SIZE)
    _check(faces, 100)
    _check(other, 100)
    assert not np.array_equal(faces.images, other.images)


def _write_pngs(folder: Path, n: int) -> list[np.ndarray]:
    """Write n distinct RGB images (non-square) and return them in RGB order."""
    rgbs = []
    for i in range(n):
        rgb = np.zeros((40, 60, 3), np.uint8)
        rgb[..., 0] = 20 * i  # red channel encodes the index
        rgb[..., 2] = 200
        assert cv2.imwrite(str(folder / f"img_{i:02d}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        rgbs.append(rgb)
    (folder / "notes.txt").write_text("ignored")
    return rgbs


def test_folder_reads_sorted_rgb(tmp_path: Path) -> None:
    _write_pngs(tmp_path, 6)
    ds = load_images(f"folder:{tmp_path}", SIZE)
    _check(ds, 6)
    assert ds.labels is None
    np.testing.assert_array_equal(ds.images[:, 0, 0, 0], [0, 20, 40, 60, 80, 100])  # sorted, RGB
    assert (ds.images[..., 2] == 200).all()
    sub = load_images(str(tmp_path), SIZE, limit=3, seed=5)  # bare directory path
    assert len(sub.images) == 3
    assert np.array_equal(sub.images, load_images(str(tmp_path), SIZE, limit=3, seed=5).images)


def test_folder_errors_name_the_spec(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="folder:"):
        load_images(f"folder:{tmp_path}", SIZE)  # empty
    with pytest.raises(ValueError, match="nowhere"):
        load_images(f"folder:{tmp_path / 'nowhere'}", SIZE)


def _write_video(path: Path, fourcc: str, n: int) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 10.0, (64, 48))
    assert writer.isOpened()
    for i in range(n):
        frame = np.full((48, 64, 3), 10 * i, np.uint8)  # brightness encodes the index
        writer.write(frame)
    writer.release()


@pytest.mark.parametrize("name,fourcc", [("clip.avi", "MJPG"), ("clip.mp4", "mp4v")])
def test_video_frames_strided(tmp_path: Path, name: str, fourcc: str) -> None:
    path = tmp_path / name
    _write_video(path, fourcc, 20)
    full = load_images(f"video:{path}", SIZE)
    assert full.images.shape == (20, SIZE, SIZE, 3) and full.labels is None
    levels = full.images.reshape(20, -1).mean(axis=1)
    assert np.all(np.diff(levels) > 0)  # frames in order
    some = load_images(str(path), SIZE, limit=5)  # bare file path -> video
    assert len(some.images) == 5
    got = some.images.reshape(5, -1).mean(axis=1)
    np.testing.assert_allclose(got, levels[[0, 5, 10, 14, 19]], atol=2)  # spread over file


def test_bad_specs_raise_value_error_naming_spec() -> None:
    for spec in ["imagenet", "fmnist:valid", "fmnist:test:label=3", "digits:class=x",
                 "photos:val", "lfw:cats", "video:/no/such/file.mp4"]:
        with pytest.raises(ValueError) as err:
            load_images(spec, SIZE)
        msg = str(err.value)
        assert repr(spec) in msg and "\n" not in msg
    with pytest.raises(ValueError, match="fmnist"):
        load_images("imagenet", SIZE)  # lists valid names
    with pytest.raises(ValueError):
        load_images("digits:class=42", SIZE)  # filter leaves nothing
