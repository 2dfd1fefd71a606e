"""Datasets: the folder layout with awkward images, the synthetic domains, pairing and augmentation, download."""

from __future__ import annotations

import hashlib
import http.server
import io
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import yaml

from conftest import TINY_BASE, run_cli
from unpaired.errors import Notice
from unpaired.plugin_api.data import IMAGE_EXTENSIONS, DataError
from unpaired.plugin_api.registry import InvalidParamsError
from unpaired.tools.download import DownloadError, download_dataset
from unpaired.training.batches import EpochOrder, TrainPairs

KINDS = ", ".join(extension.lstrip(".") for extension in IMAGE_EXTENSIONS)


def rgb(size=(40, 30), value=128) -> Image.Image:
    return Image.new("RGB", size, (value, value // 2, 255 - value))


def make_layout(root: Path, per_folder: int = 3) -> None:
    for folder in ("trainA", "trainB", "testA", "testB"):
        (root / folder).mkdir(parents=True)
        for i in range(per_folder):
            rgb(value=20 * i + (0 if folder.endswith("A") else 100)).save(root / folder / f"{i}.png")


def folder_data(registry, root, **params):
    return registry.build("dataset", {"name": "folder", "root": str(root), "load_size": 36, "crop_size": 32, **params})


def test_unusual_image_modes_become_rgb(registry, tmp_path):
    make_layout(tmp_path)
    train_a = tmp_path / "trainA"
    Image.new("L", (40, 30), 200).save(train_a / "gray.jpg")
    Image.new("P", (40, 30), 3).save(train_a / "palette.bmp")
    Image.new("RGBA", (40, 30), (10, 20, 30, 0)).save(train_a / "alpha.png")
    Image.fromarray(np.full((30, 40), 65535, dtype=np.uint16)).save(train_a / "deep16.png")
    rgb().save(train_a / "photo.webp")
    Image.fromarray(np.full((30, 40), 32768, dtype=np.uint16)).save(train_a / "micrograph.tif")  # microscopy's format
    rgb(value=60).save(train_a / "scan.TIFF")
    rgb().save(train_a / "animation.gif")
    Image.fromarray(np.full((30, 40), 0.5, dtype=np.float32), mode="F").save(train_a / "fraction.tif")  # floating point: of white
    Image.fromarray(np.array([[np.nan, 1000.0, 65535.0]], dtype=np.float32), mode="F").save(train_a / "counts.tif")  # a 16-bit range
    with pytest.warns(Notice) as caught:
        data = folder_data(registry, tmp_path)
    skipped = f"skipping 1 image(s) of a format not read (only {KINDS}): {train_a / 'animation.gif'}; convert them to PNG"
    assert [str(w.message) for w in caught] == [skipped]
    names = [p.name for p in data.files["train", "A"]]
    assert names == [
        *("0.png", "1.png", "2.png", "alpha.png", "counts.tif", "deep16.png", "fraction.tif", "gray.jpg"),
        *("micrograph.tif", "palette.bmp", "photo.webp", "scan.TIFF"),
    ]
    for index in range(len(names)):
        image = data.image("train", "A", index)
        assert image.mode == "RGB"
    assert data.image("train", "A", names.index("deep16.png")).getpixel((0, 0)) == (255, 255, 255)  # scaled, not clipped
    assert data.image("train", "A", names.index("micrograph.tif")).getpixel((0, 0)) == (128, 128, 128)
    assert data.image("train", "A", names.index("scan.TIFF")).getpixel((0, 0)) == (60, 30, 195)
    assert data.image("train", "A", names.index("fraction.tif")).getpixel((0, 0)) == (128, 128, 128)
    counts = data.image("train", "A", names.index("counts.tif"))
    assert [counts.getpixel((x, 0)) for x in range(3)] == [(0, 0, 0), (4, 4, 4), (255, 255, 255)]  # scaled, not clipped; NaN black
    assert data.image("train", "A", names.index("gray.jpg")).getpixel((0, 0))[0] in range(198, 203)
    a, b = data.train_pair(5, torch.Generator().manual_seed(0))
    assert a.shape == b.shape == (3, 32, 32) and a.min() >= -1 and a.max() <= 1


def test_corrupt_files_are_reported_once_and_skipped(registry, tmp_path):
    make_layout(tmp_path)
    (tmp_path / "trainB" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (tmp_path / "testA" / "empty.png").write_bytes(b"")
    with pytest.warns(UserWarning) as caught:
        data = folder_data(registry, tmp_path)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert message.startswith("skipping 2 unreadable image(s)")
    assert str(tmp_path / "trainB" / "broken.jpg") in message and str(tmp_path / "testA" / "empty.png") in message
    assert data.size("train", "B") == 3 and data.size("test", "A") == 3

    for index in range(7):  # a folder full of them: five are named, then how many more
        (tmp_path / "trainA" / f"cut-{index}.png").write_bytes(b"")
    with pytest.warns(UserWarning) as caught:
        folder_data(registry, tmp_path)
    message = str(caught[0].message)
    assert message.startswith("skipping 9 unreadable image(s): ") and message.endswith(" and 4 more")
    assert message.count(str(tmp_path)) == 5


def test_the_in_memory_cache_serves_the_same_pixels_without_reading_files_again(registry, tmp_path):
    make_layout(tmp_path)
    plain, cached = folder_data(registry, tmp_path), folder_data(registry, tmp_path, cache=True)
    expected = plain.train_pair(1, torch.Generator().manual_seed(3))
    for image in (tmp_path / "trainA").iterdir():
        image.unlink()
    got = cached.train_pair(1, torch.Generator().manual_seed(3))
    assert all(torch.equal(a, b) for a, b in zip(expected, got))


def test_the_folder_fingerprint_hashes_the_bytes_read_when_the_folders_were_opened_without_reading_them_again(registry, tmp_path):
    """Every file was read twice (decoded when opened, read again to hash it), and again at each scoring of ``eval.every``."""
    make_layout(tmp_path)
    data = folder_data(registry, tmp_path)
    expected = [(p.name, hashlib.sha256(p.read_bytes()).hexdigest()) for p in sorted((tmp_path / "testB").iterdir())]
    for image in (tmp_path / "testB").iterdir():
        image.unlink()
    assert data.fingerprint("test", "B") == f"folder:testB:{expected}"


def test_missing_or_empty_domain_is_a_clear_error(registry, tmp_path):
    make_layout(tmp_path)
    for image in (tmp_path / "testB").iterdir():
        image.unlink()
    (tmp_path / "testB" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match=r"testB holds no readable images"):
        folder_data(registry, tmp_path)
    (tmp_path / "testB" / "notes.txt").unlink()
    (tmp_path / "testB").rmdir()
    with pytest.raises(DataError, match=r"testB does not exist: a folder dataset needs trainA, trainB, testA and testB"):
        folder_data(registry, tmp_path)


def test_crop_larger_than_load_size_is_rejected(registry, tmp_path):
    with pytest.raises(InvalidParamsError, match="crop_size 64 is larger than load_size 36"):
        registry.resolve("dataset", {"name": "folder", "root": str(tmp_path), "load_size": 36, "crop_size": 64})


def test_training_images_smaller_than_an_unresized_crop_are_named_when_the_data_opens_and_validate_refuses_them(registry, tmp_path):
    """With load_size null, training crops each image as it is: one smaller than crop_size passed validate and stopped
    the run when first drawn, naming neither the file nor what to do."""
    make_layout(tmp_path / "data")  # 40x30 px images
    rgb(size=(64, 64)).save(tmp_path / "data" / "trainA" / "big.png")
    assert folder_data(registry, tmp_path / "data", load_size=None, crop_size=30).size("train", "A") == 4  # 30 px fits them all
    said = (
        r"6 training image\(s\) are smaller than crop_size 32 px, and with load_size null they are cropped as they are: "
        r".*trainA/0.png \(40x30\); .*; set data.load_size to resize them first \(the paper's is 286\), or a crop_size of at most 30$"
    )
    with pytest.raises(DataError, match=said):
        folder_data(registry, tmp_path / "data", load_size=None)
    assert folder_data(registry, tmp_path / "data", load_size=None, crop=False).size("test", "B") == 3  # resized, not cropped
    study = tmp_path / "small.yaml"
    data = {"name": "folder", "root": str(tmp_path / "data"), "load_size": None, "crop_size": 32}
    study.write_text(yaml.safe_dump({"name": "small", "base": {**TINY_BASE, "data": data}}))
    refused = run_cli("validate", str(study))
    assert refused.returncode == 2 and "variant[base].data: 6 training image(s) are smaller than crop_size 32 px" in refused.stderr


def test_pairs_are_unaligned_random_or_serial_and_reproducible(registry, tmp_path):
    make_layout(tmp_path, per_folder=5)
    data = folder_data(registry, tmp_path, crop=False, flip=False)
    pairs = TrainPairs(data)
    b_values = {float(pairs[(0, seed)][1].mean()) for seed in range(30)}
    assert len(b_values) == 5  # B is drawn at random among the 5 images
    torch.testing.assert_close(pairs[(2, 7)][1], pairs[(2, 7)][1])
    serial = TrainPairs(folder_data(registry, tmp_path, crop=False, flip=False, serial=True))
    expected_b = data.transform.test(data.image("train", "B", 3))
    assert all(torch.equal(serial[(3, seed)][1], expected_b) for seed in range(5))


def test_training_augmentation_crops_and_flips_from_the_item_seed(registry, tmp_path):
    make_layout(tmp_path)
    gradient = np.tile(np.arange(40, dtype=np.uint8)[None, :, None] * 6, (40, 1, 3))
    Image.fromarray(gradient).save(tmp_path / "trainA" / "0.png")
    data = folder_data(registry, tmp_path, load_size=None, crop_size=16)
    crops = [data.train_pair(0, torch.Generator().manual_seed(seed))[0] for seed in range(40)]
    flipped = [bool(c[0, 0, 0] > c[0, 0, -1]) for c in crops]
    assert 10 < sum(flipped) < 30
    assert len({round(float(c.mean()), 4) for c in crops}) > 10  # crops start at many offsets
    assert data.test_image("A", 0).shape == (3, 16, 16)


def test_epoch_order_is_a_seeded_permutation_that_can_start_midway():
    order = list(EpochOrder(10, seed=1, epoch=0))
    assert sorted(i for i, _ in order) == list(range(10))
    assert order == list(EpochOrder(10, seed=1, epoch=0))
    assert order != list(EpochOrder(10, seed=1, epoch=1)) and order != list(EpochOrder(10, seed=2, epoch=0))
    assert list(EpochOrder(10, seed=1, epoch=0, start=4)) == order[4:]


def test_synthetic_domains_are_deterministic_and_distinct(registry):
    one = registry.build("dataset", {"name": "synthetic", "size": 32, "seed": 5})
    again = registry.build("dataset", {"name": "synthetic", "size": 32, "seed": 5})
    other = registry.build("dataset", {"name": "synthetic", "size": 32, "seed": 6})
    pixels = lambda d, *key: np.asarray(d.image(*key), dtype=np.float32)  # noqa: E731
    assert np.array_equal(pixels(one, "train", "A", 3), pixels(again, "train", "A", 3))
    assert not np.array_equal(pixels(one, "train", "A", 3), pixels(other, "train", "A", 3))
    # stripes (B) vary much more between neighbouring pixels than smooth blobs (A)
    roughness = lambda image: np.abs(np.diff(image, axis=1)).mean()  # noqa: E731
    a = np.mean([roughness(pixels(one, "train", "A", i)) for i in range(10)])
    b = np.mean([roughness(pixels(one, "train", "B", i)) for i in range(10)])
    assert b > 2 * a


def test_data_export_command_writes_a_dataset_in_the_folder_layout(registry, tmp_path):
    result = run_cli("data", "export", "synthetic", str(tmp_path / "syn"), "size=32", "n_train=6", "n_test=2", "seed=4")
    assert result.returncode == 0, result.stderr
    from_disk = folder_data(registry, tmp_path / "syn", load_size=None)
    generated = registry.build("dataset", {"name": "synthetic", "size": 32, "n_train": 6, "n_test": 2, "seed": 4})
    assert (from_disk.size("train", "A"), from_disk.size("test", "B")) == (6, 2)
    assert np.array_equal(np.asarray(from_disk.image("train", "B", 5)), np.asarray(generated.image("train", "B", 5)))
    again = run_cli("data", "export", "synthetic", str(tmp_path / "syn"), "size=32", "n_train=2", "n_test=2", "seed=5")
    assert again.returncode == 2 and f"{tmp_path / 'syn'} already holds files: export into a new or empty folder" in again.stderr
    assert folder_data(registry, tmp_path / "syn", load_size=None).size("train", "A") == 6  # never two datasets mixed in one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["syn"]  # nothing left beside it
    bad = run_cli("data", "export", "synthetic", str(tmp_path / "bad"), "size=huge", "n_train")
    assert bad.returncode == 1 and "expected KEY=VALUE, got 'n_train'" in bad.stderr
    bad = run_cli("data", "export", "synthetic", str(tmp_path / "bad"), "size=huge")
    assert bad.returncode == 2 and "data.size: Input should be a valid integer" in bad.stderr and "(got 'huge')" in bad.stderr


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves bytes from ``self.server.files`` with HTTP Range support, and records the Range headers."""

    def do_GET(self):
        body = self.server.files.get(self.path.lstrip("/"))
        if body is None:
            self.send_error(404)
            return
        self.server.ranges.append(self.headers.get("Range"))
        start = int(self.headers["Range"][6:-1]) if self.headers.get("Range") else 0
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        self.wfile.write(body[start:])

    def log_message(self, *args):
        pass


@pytest.fixture
def server(monkeypatch):
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    httpd.files, httpd.ranges = {}, []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("UNPAIRED_DATASETS_URL", f"http://127.0.0.1:{httpd.server_address[1]}/datasets")
    yield httpd
    httpd.shutdown()


def dataset_zip(name: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for folder in ("trainA", "trainB", "testA", "testB"):
            for i in range(2):
                png = io.BytesIO()
                rgb(value=30 * i).save(png, format="PNG")
                archive.writestr(f"{name}/{folder}/{i}.png", png.getvalue())
    return buffer.getvalue()


def test_download_extracts_the_layout_and_resumes_a_partial_file(server, tmp_path, registry):
    body = dataset_zip("horse2zebra")
    server.files["datasets/horse2zebra.zip"] = body
    (tmp_path / "horse2zebra.zip.part").write_bytes(body[:1000])
    folder = download_dataset("horse2zebra", tmp_path, show_progress=False)
    assert server.ranges == ["bytes=1000-"]
    assert folder == tmp_path / "horse2zebra"
    assert sorted(p.name for p in folder.iterdir()) == ["testA", "testB", "trainA", "trainB"]
    assert not (tmp_path / "horse2zebra.zip.part").exists()
    assert folder_data(registry, folder).size("train", "A") == 2
    assert download_dataset("horse2zebra", tmp_path, show_progress=False) == folder  # complete: nothing fetched
    assert len(server.ranges) == 1


def test_download_rejects_a_damaged_archive(server, tmp_path):
    body = bytearray(dataset_zip("apple2orange"))
    body[200] ^= 0xFF
    server.files["datasets/apple2orange.zip"] = bytes(body)
    with pytest.raises(DownloadError, match="damaged|not a valid zip"):
        download_dataset("apple2orange", tmp_path, show_progress=False)


def test_download_command_explains_what_to_do_when_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("UNPAIRED_DATASETS_URL", "http://127.0.0.1:9/datasets")  # nothing listens on port 9
    result = run_cli("data", "download", "monet2photo", "--to", str(tmp_path))
    assert result.returncode == 1
    assert "cannot reach http://127.0.0.1:9/datasets/monet2photo.zip" in result.stderr
    assert "download the zip on a connected machine" in result.stderr
