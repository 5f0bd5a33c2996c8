"""prefit.data.image_dir: a folder of class sub-folders of PNG/JPEG files, read at one resolution."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from prefit import data
from prefit.config import DatasetConfig
from prefit.data import DataError, ImageSet, draw_triples, read_image_dir, to_signal, to_uint8


def solid(colour, size=(8, 8), mode="RGB") -> Image.Image:
    """A solid image; size is Pillow's (width, height)."""
    return Image.new(mode, size, colour)


def save(image: Image.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def colour(k: int) -> tuple[int, int, int]:
    return ((10 * k + 5) % 256, (200 - 7 * k) % 256, (37 * k) % 256)


def make_dir(root: Path, layout: dict[str, list[str]], side: int = 8) -> dict[tuple[str, str], tuple]:
    """Solid images at root/<class>/<file>, each a distinct colour; returns (class, file) -> colour."""
    colours = {}
    k = 0
    for cls, files in layout.items():
        for name in files:
            colours[(cls, name)] = colour(k)
            save(solid(colour(k), (side, side)), root / cls / name)
            k += 1
    return colours


def one_line(e: pytest.ExceptionInfo) -> str:
    message = str(e.value)
    assert "\n" not in message, message
    return message


# ------------------------------------------------------------------------------------------ layout


def test_layout_labels_and_file_order(tmp_path):
    root = tmp_path / "set"
    # created out of order; names sort as strings ("10.png" before "2.png"), extensions in any case
    layout = {"zebra": ["b.png", "a.PNG"], "ant": ["2.png", "10.png", "1.Png"], "Mole": ["x.png"]}
    layout["bee"] = ["B.png", "a.png"]
    colours = make_dir(root, layout)
    save(solid((1, 2, 3)), root / "ant" / ".hidden.png")  # hidden files and folders are not read
    save(solid((1, 2, 3)), root / ".cache" / "junk.png")
    (root / "README.txt").write_text("files directly in the folder are not classes")

    images = read_image_dir(root, 8)
    assert isinstance(images, ImageSet) and images.side == 8
    assert images.label_names == ["Mole", "ant", "bee", "zebra"]  # sorted as Python sorts str: by code point
    assert images.labels.dtype == np.int64 and images.labels.tolist() == [0, 1, 1, 1, 2, 2, 3, 3]
    order = [
        ("Mole", "x.png"),
        ("ant", "1.Png"),
        ("ant", "10.png"),
        ("ant", "2.png"),
        ("bee", "B.png"),
        ("bee", "a.png"),
        ("zebra", "a.PNG"),
        ("zebra", "b.png"),
    ]
    assert images.images.shape == (8, 8, 8, 3) and images.images.dtype == np.uint8
    for i, key in enumerate(order):
        assert (images.images[i] == colours[key]).all(), key
    assert images.source == f"{root} (image_dir, 8x8)"


def test_jpeg_and_many_files(tmp_path):
    root = tmp_path / "set"
    for cls in ("a", "b", "c"):
        for i in range(40):
            save(solid(colour(i), (6, 6)), root / cls / f"{i:03d}.png")
    save(solid((200, 100, 50), (16, 16)), root / "b" / "z.jpeg")
    save(solid((200, 100, 50), (16, 16)), root / "c" / "z.JPG")
    images = read_image_dir(root, 4)
    assert len(images) == 122 and np.bincount(images.labels).tolist() == [40, 41, 41]
    assert (images.images[:40, 0, 0] == [colour(i) for i in range(40)]).all()
    for i in (80, 121):  # the JPEGs come last in their classes; lossy, but a solid colour stays close
        assert np.abs(images.images[i].astype(int) - (200, 100, 50)).max() <= 3


# ------------------------------------------------------------------------------------------ pixels


def test_centre_crop_of_a_wide_and_a_tall_image(tmp_path):
    centre, margin = (250, 10, 10), (0, 0, 255)
    wide = np.zeros((30, 50, 3), np.uint8)
    wide[:] = margin
    wide[:, 10:40] = centre  # the central 30x30 square
    save(Image.fromarray(wide), tmp_path / "set" / "wide" / "w.png")
    save(Image.fromarray(np.ascontiguousarray(wide.transpose(1, 0, 2))), tmp_path / "set" / "tall" / "t.png")
    images = read_image_dir(tmp_path / "set", 8)
    assert images.images.shape == (2, 8, 8, 3)
    assert (images.images == centre).all()  # an off-centre crop would bring the margin colour in


def test_odd_difference_crops_at_floor_offset_and_skips_resize(tmp_path):
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, size=(30, 33, 3), dtype=np.uint8)  # (33 - 30) // 2 = 1 column off the left
    save(Image.fromarray(photo), tmp_path / "set" / "a" / "p.png")
    save(Image.fromarray(photo[:, :30]), tmp_path / "set" / "b" / "q.png")
    images = read_image_dir(tmp_path / "set", 30)
    np.testing.assert_array_equal(images.images[0], photo[:, 1:31])  # exact: no resize at the same size
    np.testing.assert_array_equal(images.images[1], photo[:, :30])


def test_resize_is_pillows_lanczos(tmp_path):
    rng = np.random.default_rng(1)
    photo = rng.integers(0, 256, size=(20, 20, 3), dtype=np.uint8)
    save(Image.fromarray(photo), tmp_path / "set" / "a" / "p.png")
    save(Image.fromarray(photo), tmp_path / "set" / "b" / "p.png")
    images = read_image_dir(tmp_path / "set", 7)
    expected = np.asarray(Image.fromarray(photo).resize((7, 7), Image.Resampling.LANCZOS))
    np.testing.assert_array_equal(images.images[0], expected)
    bilinear = np.asarray(Image.fromarray(photo).resize((7, 7), Image.Resampling.BILINEAR))
    assert not np.array_equal(expected, bilinear)  # the check above can tell the filters apart


def test_grey_palette_rgba_and_16_bit_become_rgb(tmp_path):
    root = tmp_path / "set"
    save(solid(100, mode="L"), root / "a" / "1_grey.png")
    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([0, 0, 0, 12, 34, 56] + [0] * 762)
    save(palette, root / "a" / "2_palette.png")
    save(solid((10, 20, 30, 0), mode="RGBA"), root / "a" / "3_rgba.png")  # alpha dropped, not composited
    save(solid((70, 128), mode="LA"), root / "a" / "4_la.png")
    save(Image.fromarray(np.full((8, 8), 65535, np.uint16)), root / "b" / "5_grey16.png")
    save(solid(7, mode="L"), root / "b" / "6_grey.jpg")
    images = read_image_dir(root, 4)
    assert images.images.shape == (6, 4, 4, 3)
    for i, rgb in enumerate([(100, 100, 100), (12, 34, 56), (10, 20, 30), (70, 70, 70), (255, 255, 255)]):
        assert (images.images[i] == rgb).all(), (i, images.images[i, 0, 0])
    assert np.abs(images.images[5].astype(int) - 7).max() <= 2


def test_resolution_plumbs_through(tmp_path):
    rng = np.random.default_rng(2)
    for cls in ("a", "b"):
        save(Image.fromarray(rng.integers(0, 256, size=(24, 24, 3), dtype=np.uint8)), tmp_path / "s" / cls / "x.png")
    for side in (2, 12, 24, 40):
        images = read_image_dir(tmp_path / "s", side)
        assert images.side == side and images.images.shape == (2, side, side, 3)
        assert f"{side}x{side}" in images.source
        signal = to_signal(images.images)
        assert signal.shape == (2, side * side, 3)
        np.testing.assert_array_equal(to_uint8(signal), images.images)  # side inferred from the pixel count
    with pytest.raises(ValueError, match="not a square"):
        to_uint8(np.zeros((2, 12, 3), np.float32))


# ------------------------------------------------------------------------------------------ errors


def _broken(root: Path) -> None:
    (root / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")


def _text(root: Path) -> None:
    (root / "b" / "notes.txt").write_text("hello")


def _empty_class(root: Path) -> None:
    (root / "empty").mkdir()
    (root / "empty" / ".DS_Store").write_bytes(b"")


def _nested(root: Path) -> None:
    save(solid((1, 2, 3)), root / "b" / "deeper" / "x.png")


@pytest.mark.parametrize(
    "spoil, names",
    [
        (_broken, ["broken.png", "cannot read the image"]),
        (_text, ["notes.txt", "not a PNG or JPEG", "'b'"]),
        (_empty_class, ["'empty'", "no PNG or JPEG"]),
        (_nested, ["deeper", "'b'"]),
    ],
    ids=["unreadable", "not-an-image", "empty-class", "nested-folder"],
)
def test_bad_class_contents(tmp_path, spoil, names):
    root = tmp_path / "set"
    make_dir(root, {"a": ["1.png"], "b": ["1.png"]})
    read_image_dir(root, 8)
    spoil(root)
    with pytest.raises(DataError) as e:
        read_image_dir(root, 8)
    message = one_line(e)
    for name in names:
        assert name in message, message


def test_bad_folders_and_resolutions(tmp_path):
    with pytest.raises(DataError) as e:
        read_image_dir(None, 8)
    assert "no dataset.path" in one_line(e)
    with pytest.raises(DataError) as e:
        read_image_dir(tmp_path / "nowhere", 8)
    assert "nowhere" in one_line(e) and "does not exist" in str(e.value)
    (tmp_path / "file.png").write_bytes(b"")
    with pytest.raises(DataError) as e:
        read_image_dir(tmp_path / "file.png", 8)
    assert "file.png" in one_line(e) and "not a folder" in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as e:
        read_image_dir(tmp_path / "empty", 8)
    assert "no class sub-folders" in one_line(e) and "empty" in str(e.value)
    save(solid((1, 2, 3)), tmp_path / "flat" / "x.png")
    with pytest.raises(DataError, match="no class sub-folders .*1 files lie directly"):
        read_image_dir(tmp_path / "flat", 8)
    make_dir(tmp_path / "one", {"only": ["1.png", "2.png"]})
    with pytest.raises(DataError) as e:
        read_image_dir(tmp_path / "one", 8)
    assert "'only'" in one_line(e) and "at least 2 classes" in str(e.value)
    make_dir(tmp_path / "ok", {"a": ["1.png"], "b": ["1.png"]})
    for bad in (1, 0, -3, 4097, 2.5, True, "64"):
        with pytest.raises(DataError) as e:
            read_image_dir(tmp_path / "ok", bad)
        assert "dataset.resolution" in one_line(e)
    assert read_image_dir(tmp_path / "ok", np.int64(2)).side == 2


# ------------------------------------------------------------------------------------------ study use


def test_draw_triples_on_three_classes(tmp_path):
    make_dir(tmp_path / "s", {c: [f"{i}.png" for i in range(5)] for c in ("x", "y", "z")})
    images = read_image_dir(tmp_path / "s", 4)
    triples = draw_triples(images.labels, 5, seed=3)  # 15 images: at most 5 triples
    used = [i for t in triples for i in (t.target, t.same, t.other)]
    assert len(set(used)) == 15
    for t in triples:
        assert images.labels[t.same] == images.labels[t.target] != images.labels[t.other]
    with pytest.raises(DataError, match=r"per class: 5, 5, 5\) allow at most 5"):
        draw_triples(images.labels, 6, seed=3)


def test_fewer_than_two_classes_cannot_make_triples():
    with pytest.raises(DataError) as e:
        draw_triples(np.zeros(9, dtype=np.int64), 1, 0)
    assert "at least 2 classes" in one_line(e)
    assert draw_triples(np.zeros(9, dtype=np.int64), 0, 0) == []


def test_load_images_image_dir(tmp_path, cifar_dir):
    make_dir(tmp_path / "s", {"a": ["1.png"], "b": ["1.png", "2.png"]}, side=70)
    images = data.load_images(DatasetConfig(name="image_dir", path=str(tmp_path / "s"), resolution=16))
    assert images.side == 16 and len(images) == 3 and "image_dir, 16x16" in images.source
    assert data.load_images(DatasetConfig(name="image_dir", path=str(tmp_path / "s"))).side == 64  # the default
    old = SimpleNamespace(name="image_dir", root=None, path=str(tmp_path / "s"), split="train", n_triples=2, url="")
    assert data.load_images(old).side == 64  # a config from before dataset.resolution
    with pytest.raises(DataError, match="no dataset.path"):
        data.load_images(DatasetConfig(name="image_dir"))

    cifar = DatasetConfig(name="cifar_dir", path=str(cifar_dir), split="test", resolution=32)
    assert data.load_images(cifar).side == 32
    cifar.resolution = 16
    with pytest.raises(DataError, match="CIFAR images are 32x32: dataset.resolution applies to dataset=image_dir"):
        data.load_images(cifar)
    with pytest.raises(DataError) as e:
        data.load_images(SimpleNamespace(name="mnist", resolution=None))
    assert "image_dir, cifair10 or cifar_dir" in one_line(e) and "mnist" in str(e.value)
