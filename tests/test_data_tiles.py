"""prefit.data.tiles and `python -m prefit.data build-tiles`: an image_dir cut from scikit-image's photographs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from prefit.data import DataError, read_image_dir, tiles
from prefit.data import __main__ as cli
from prefit.data.tiles import DEFAULT_PHOTOS, MARKER, build_tiles, load_photo

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def skdata():
    return pytest.importorskip("skimage.data", reason="scikit-image is not installed (pip install scikit-image)")


def siblings(out: Path) -> list[str]:
    """What lies beside `out`: a failed or finished build must leave no temporary folder there."""
    return sorted(p.name for p in out.parent.iterdir())


def test_tiles_are_exact_crops_and_load_back(tmp_path, skdata):
    out = tmp_path / "tiles"
    counts = build_tiles(out, size=128, photos=["chelsea", "astronaut"])
    photos = {"chelsea": skdata.chelsea(), "astronaut": skdata.astronaut()}
    expected = {n: (p.shape[0] // 128) * (p.shape[1] // 128) for n, p in photos.items()}
    assert counts == expected == {"chelsea": 2 * 3, "astronaut": 4 * 4}
    assert list(counts) == ["chelsea", "astronaut"]  # the order given
    assert siblings(out) == ["tiles"]
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "astronaut", "chelsea"]

    for name, photo in photos.items():
        files = sorted((out / name).iterdir())
        rows, cols = photo.shape[0] // 128, photo.shape[1] // 128
        assert [f.name for f in files] == [f"{name}_r{r}_c{c}.png" for r in range(rows) for c in range(cols)]
        for f in files:
            r, c = map(int, re.fullmatch(rf"{name}_r(\d+)_c(\d+)\.png", f.name).groups())
            tile = np.asarray(Image.open(f))
            np.testing.assert_array_equal(tile, photo[r * 128 : (r + 1) * 128, c * 128 : (c + 1) * 128])

    images = read_image_dir(out, 128)
    assert images.label_names == ["astronaut", "chelsea"] and np.bincount(images.labels).tolist() == [16, 6]
    np.testing.assert_array_equal(images.images[16 + 4], photos["chelsea"][128:256, 128:256])  # r1_c1, row-major
    small = read_image_dir(out, 32)  # dataset.resolution resizes at load time
    assert small.images.shape == (22, 32, 32, 3)


def test_zero_padded_names_sort_row_major(tmp_path, skdata):
    build_tiles(tmp_path / "t", size=40, photos=["chelsea"])  # 300x451: 7 rows x 11 columns
    names = sorted(p.name for p in (tmp_path / "t" / "chelsea").iterdir())
    assert len(names) == 77 and names[:2] == ["chelsea_r00_c00.png", "chelsea_r00_c01.png"]
    assert names[11] == "chelsea_r01_c00.png" and names[-1] == "chelsea_r06_c10.png"


def test_existing_out_refused_then_replaced_with_overwrite(tmp_path, skdata):
    out = tmp_path / "tiles"
    build_tiles(out, size=128, photos=["chelsea", "astronaut"])
    with pytest.raises(DataError, match="exists and is not empty; pass --overwrite") as e:
        build_tiles(out, size=128, photos=["coffee", "chelsea"])
    assert "\n" not in str(e.value) and str(out) in str(e.value)
    assert (out / "astronaut").is_dir() and not (out / "coffee").exists()  # untouched

    assert build_tiles(out, size=200, photos=["coffee", "chelsea"], overwrite=True) == {"coffee": 6, "chelsea": 2}
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "chelsea", "coffee"]
    assert siblings(out) == ["tiles"]

    mine = tmp_path / "mine"  # a folder build-tiles did not make is not deleted, even with overwrite
    (mine / "thesis").mkdir(parents=True)
    with pytest.raises(DataError, match="not made by build-tiles"):
        build_tiles(mine, size=128, photos=["chelsea"], overwrite=True)
    assert (mine / "thesis").is_dir()
    (tmp_path / "empty").mkdir()  # an empty folder is simply used
    assert build_tiles(tmp_path / "empty", size=128, photos=["chelsea"]) == {"chelsea": 6}
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="not a folder"):
        build_tiles(tmp_path / "file", size=128, photos=["chelsea"], overwrite=True)


def test_failure_mid_build_leaves_the_old_folder(tmp_path, skdata, monkeypatch):
    out = tmp_path / "tiles"
    build_tiles(out, size=128, photos=["chelsea"])
    before = sorted(p.name for p in (out / "chelsea").iterdir())
    calls = {"n": 0}
    real_save = Image.Image.save

    def failing_save(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError(28, "No space left on device")
        return real_save(self, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", failing_save)
    with pytest.raises(DataError, match="cannot write the tiles .*No space left") as e:
        build_tiles(out, size=128, photos=["astronaut"], overwrite=True)
    assert "\n" not in str(e.value)
    assert sorted(p.name for p in (out / "chelsea").iterdir()) == before and not (out / "astronaut").exists()
    assert siblings(out) == ["tiles"]


def test_bad_requests(tmp_path, skdata):
    out = tmp_path / "tiles"
    for kwargs, message in [
        ({"size": 301, "photos": ["chelsea"]}, r"larger than a side of chelsea \(300x451\)"),
        ({"size": 1}, "tile size must be an integer >= 2"),
        ({"photos": ["chelsea", "lena"]}, "unknown photograph.*lena.*choose from astronaut"),
        ({"photos": ["chelsea", "chelsea"]}, "named twice: chelsea"),
        ({"photos": []}, "no photographs"),
    ]:
        with pytest.raises(DataError, match=message) as e:
            build_tiles(out, **kwargs)
        assert "\n" not in str(e.value)
    assert siblings(out) == []


def test_missing_scikit_image_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "skimage", None)  # import skimage.data now raises ImportError
    monkeypatch.setitem(sys.modules, "skimage.data", None)
    with pytest.raises(DataError, match=r"needs scikit-image.*pip install scikit-image.*\[tiles\]") as e:
        load_photo("chelsea")
    assert "\n" not in str(e.value)


def test_default_photos_load_offline_as_rgb(skdata):
    assert len(DEFAULT_PHOTOS) == 6 and "retina" not in DEFAULT_PHOTOS and set(DEFAULT_PHOTOS) <= set(tiles.PHOTOS)
    for name in DEFAULT_PHOTOS:  # files inside the wheel: a download attempt would fail in CI without network
        photo = load_photo(name)
        assert photo.dtype == np.uint8 and photo.ndim == 3 and photo.shape[2] == 3 and min(photo.shape[:2]) >= 256


# ------------------------------------------------------------------------------------------ command line


def test_cli_builds_and_summarises(tmp_path, skdata, capsys):
    out = tmp_path / "tiles"
    assert cli.main(["build-tiles", str(out), "--size", "128", "--photos", "chelsea,astronaut"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("chelsea: 6 tiles") and lines[1].startswith("astronaut: 16 tiles")
    assert lines[2] == f"total: 22 tiles of 128x128 in 2 classes -> {out}"
    assert cli.main(["build-tiles", str(out), "--size", "128", "--photos", "chelsea"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "--overwrite" in err


def test_cli_help_lists_the_subcommand(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0 and "build-tiles" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["build-tiles", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "source photograph" in text and "dataset.resolution resizes" in text and "--overwrite" in text


def test_cli_bad_input_exits_2_with_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "prefit.data", "build-tiles", str(tmp_path / "t"), "--size", "0"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "tile size must be an integer >= 2" in result.stderr and not (tmp_path / "t").exists()
