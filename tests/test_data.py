"""prefit.data: reading CIFAR-layout folders safely, fetching ciFAIR-10, drawing triples and pools."""

from __future__ import annotations

import hashlib
import io
import itertools
import os
import pickle
import re
import socket
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import LABEL_NAMES, MARK, dump_batch

from prefit import data
from prefit.config import DatasetConfig
from prefit.data import DataError, Triple, draw_pool, draw_triples, max_triples, read_cifar_dir, safe_load

SAMPLE_MD5S = {  # ../shared/data/README.md
    "batches.meta": "0bc80fe55460179b905cbcb357b446e8",
    "data_batch_1": "046d1ae095c56f0d79de3ad5e0a55d2d",
    "data_batch_2": "6a56b1b6ee7684abbb0facc9ed6280d1",
    "data_batch_3": "10a9b044a8f6cffacf69782b512373bc",
    "data_batch_4": "0976be198a94d32ba891a47cb1551d3a",
    "data_batch_5": "43b80ad3e95e4e2dd065989f269d32d5",
    "test_batch": "944e7dd80430350c63f6a0d362d4e1a1",
}
FILES = list(SAMPLE_MD5S)


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def raw(path: Path) -> dict:
    with open(path, "rb") as f:  # our own test files: a plain unpickler is fine here
        return pickle.load(f, encoding="bytes")


# ------------------------------------------------------------------------------------------ reading


@pytest.mark.parametrize("style", ["py2", "py3", "mixed"])
def test_read_synthetic_folder(make_cifar_dir, style):
    folder = make_cifar_dir(style=style)
    train = read_cifar_dir(folder, "train")
    assert train.images.shape == (50, 32, 32, 3) and train.images.dtype == np.uint8
    assert train.labels.dtype == np.int64 and train.labels.tolist() == [
        (j + b) % 10 for b in range(5) for j in range(10)
    ]
    assert train.label_names == LABEL_NAMES
    assert str(folder) in train.source and "train" in train.source
    row, col, rgb = MARK
    assert tuple(train.images[0, row, col]) == rgb
    # batches are concatenated in order, each row R, G, B planes of 32x32 row-major
    first = raw(folder / "data_batch_3")[b"data"]
    np.testing.assert_array_equal(train.images[20:30], first.reshape(10, 3, 32, 32).transpose(0, 2, 3, 1))
    i, r, c, ch = 25, 7, 30, 2
    assert train.images[i, r, c, ch] == first[i - 20, ch * 1024 + r * 32 + c]

    test = read_cifar_dir(folder, "test")
    assert test.images.shape == (10, 32, 32, 3) and test.labels.tolist() == [(j + 5) % 10 for j in range(10)]
    np.testing.assert_array_equal(
        test.images.reshape(10, -1, 3).transpose(0, 2, 1).reshape(10, -1), raw(folder / "test_batch")[b"data"]
    )


def test_read_protocol5_str_keys_numpy_labels(cifar_dir):
    """A folder written by a Python 3 tool: protocol 5, str keys, numpy integer labels."""
    path = cifar_dir / "test_batch"
    batch = {k.decode(): v for k, v in raw(path).items()}
    batch["labels"] = [np.int64(x) for x in batch["labels"]]
    path.write_bytes(pickle.dumps(batch, protocol=5))
    assert read_cifar_dir(cifar_dir, "test").labels.tolist() == [(j + 5) % 10 for j in range(10)]


def test_load_images_cifar_dir(cifar_dir):
    images = data.load_images(DatasetConfig(name="cifar_dir", path=str(cifar_dir), split="test"))
    assert len(images) == 10


def test_load_images_unknown_name():
    with pytest.raises(DataError, match="cifair10 or cifar_dir"):
        data.load_images(DatasetConfig(name="mnist"))


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_cifar_dir(tmp_path / "nowhere", "train")


def test_not_cifar_layout(tmp_path, cifar_dir):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="CIFAR-10 python layout") as e:
        read_cifar_dir(tmp_path / "empty", "train")
    assert "data_batch_1" in str(e.value) and "batches.meta" in str(e.value)
    (cifar_dir / "data_batch_4").unlink()
    with pytest.raises(DataError, match="lacks data_batch_4: not"):
        read_cifar_dir(cifar_dir, "train")
    read_cifar_dir(cifar_dir, "test")  # the test split does not need the training batches
    with pytest.raises(DataError, match="split"):
        read_cifar_dir(cifar_dir, "val")


def _rewrite(folder: Path, name: str, **changes) -> None:
    batch = raw(folder / name)
    batch.update({k.encode(): v for k, v in changes.items()})
    dump_batch(batch, folder / name, "py3")


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"data": np.zeros((10, 3000), np.uint8)}, "uint8 array of shape N x 3072"),
        ({"data": np.zeros((10, 3072), np.float32)}, "uint8 array"),
        ({"data": [[0] * 3072] * 10}, "uint8 array"),
        ({"labels": [0, 1, 2, 3, 4, 5, 6, 7, 8, 10]}, r"labels must be in 0\.\.9"),
        ({"labels": [0, 1, -1, 3, 4, 5, 6, 7, 8, 9]}, r"labels must be in 0\.\.9"),
        ({"labels": [0, 1, 2]}, "3 labels for 10 images"),
        ({"labels": ["a"] * 10}, "list of integers"),
        ({"data": np.zeros((0, 3072), np.uint8), "labels": []}, "holds no images"),
        ({"labels": []}, "holds no images"),
    ],
)
def test_bad_batch(cifar_dir, changes, message):
    _rewrite(cifar_dir, "data_batch_2", **changes)
    with pytest.raises(DataError, match=message) as e:
        read_cifar_dir(cifar_dir, "train")
    assert "data_batch_2" in str(e.value)


def test_bad_meta_and_non_dict(cifar_dir):
    dump_batch({b"label_names": [b"a"] * 9}, cifar_dir / "batches.meta", "py2")
    with pytest.raises(DataError, match="10 names"):
        read_cifar_dir(cifar_dir, "test")
    dump_batch([1, 2, 3], cifar_dir / "batches.meta", "py2")
    with pytest.raises(DataError, match="not the dict"):
        read_cifar_dir(cifar_dir, "test")
    dump_batch({b"data": np.zeros((10, 3072), np.uint8)}, cifar_dir / "test_batch", "py2")
    dump_batch({b"label_names": [n.encode() for n in LABEL_NAMES]}, cifar_dir / "batches.meta", "py2")
    with pytest.raises(DataError, match="no 'labels' entry"):
        read_cifar_dir(cifar_dir, "test")


def test_truncated_pickle(cifar_dir):
    path = cifar_dir / "data_batch_1"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(DataError, match="not a readable CIFAR pickle"):
        read_cifar_dir(cifar_dir, "train")


# ------------------------------------------------------------------------------------------ unpickler


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_unpickler_refuses_code(tmp_path, cifar_dir):
    marker = tmp_path / "pwned"
    path = cifar_dir / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": _Evil(marker)}, protocol=2))
    with pytest.raises(DataError, match=r"forbidden global (posix|nt|os)\.system") as e:
        safe_load(path)
    assert str(path) in str(e.value)
    with pytest.raises(DataError, match="forbidden global"):
        read_cifar_dir(cifar_dir, "train")
    assert not marker.exists()


@pytest.mark.parametrize(
    "payload, forbidden",
    [
        (b"\x80\x02cbuiltins\neval\nX\x04\x00\x00\x001+1\x85R.", "builtins.eval"),
        (b"\x80\x02c__builtin__\ngetattr\n.", "__builtin__.getattr"),  # py2 name, mapped by fix_imports
        (b"\x80\x04\x8c\x08builtins\x8c\x04exec\x93.", "builtins.exec"),  # STACK_GLOBAL
        (b"\x80\x02cnumpy\nload\n.", "numpy.load"),
    ],
    ids=["eval", "py2-getattr", "stack-global-exec", "numpy.load"],
)
def test_unpickler_refuses_globals(tmp_path, payload, forbidden):
    path = tmp_path / "batch"
    path.write_bytes(payload)
    with pytest.raises(DataError, match="forbidden global " + re.escape(forbidden)):
        safe_load(path)


def test_codecs_encode_latin1_only(tmp_path):
    path = tmp_path / "batch"
    path.write_bytes(b"\x80\x02c_codecs\nencode\nX\x02\x00\x00\x00\xc3\xa9X\x06\x00\x00\x00latin1\x86R.")
    assert safe_load(path) == "\xe9".encode("latin1")
    path.write_bytes(b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00xX\x05\x00\x00\x00rot13\x86R.")
    with pytest.raises(DataError, match="rot13"):
        safe_load(path)


# ------------------------------------------------------------------------------------------ shared sample


def test_shared_sample(shared_sample):
    for name, expected in SAMPLE_MD5S.items():
        assert md5(shared_sample / name) == expected, name
    train = read_cifar_dir(shared_sample, "train")
    test = read_cifar_dir(shared_sample, "test")
    assert train.images.shape == (5000, 32, 32, 3) and test.images.shape == (1000, 32, 32, 3)
    assert train.label_names == test.label_names == LABEL_NAMES
    assert np.bincount(train.labels).tolist() == [500] * 10
    assert np.bincount(test.labels).tolist() == [100] * 10
    assert 20 < train.images.mean() < 235 and train.images.std() > 20  # real images, not a constant


# ------------------------------------------------------------------------------------------ download


def _archive(folder: Path) -> bytes:
    """The official archive's layout: ciFAIR-10/<file> for the seven files."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name in FILES:
            zf.write(folder / name, f"ciFAIR-10/{name}")
    return buf.getvalue()


@pytest.fixture
def server(monkeypatch, cifar_dir):
    """An HTTP server on 127.0.0.1 serving `state.payload` (a small archive) and counting requests."""
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    payload = _archive(cifar_dir)
    state = SimpleNamespace(
        payload=payload,
        length=None,  # Content-Length to announce; None: the payload's
        requests=0,
        md5s={"archive_md5": hashlib.md5(payload).hexdigest(), "file_md5s": {n: md5(cifar_dir / n) for n in FILES}},
    )

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            state.requests += 1
            self.send_response(200)
            self.send_header("Content-Type", "application/zip")
            self.send_header("Content-Length", str(state.length or len(state.payload)))
            self.end_headers()
            self.wfile.write(state.payload)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}/ciFAIR-10.zip"
    yield state
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_fetch_good_archive_once(tmp_path, server):
    root = tmp_path / "cache"
    folder = data.fetch_cifair10(str(root), server.url, **server.md5s)
    assert folder == root / "ciFAIR-10" and server.requests == 1
    assert {p.name for p in files_under(root)} == {*FILES, "ciFAIR-10.zip"}
    assert all(md5(folder / n) == m for n, m in server.md5s["file_md5s"].items())
    assert len(read_cifar_dir(folder, "train")) == 50

    assert data.fetch_cifair10(root, server.url, **server.md5s) == folder
    assert server.requests == 1  # valid files: no network

    (folder / "data_batch_3").write_bytes(b"garbage")  # a corrupt batch comes back from the archive
    (folder / "test_batch").unlink()
    assert data.fetch_cifair10(root, server.url, **server.md5s) == folder
    assert md5(folder / "data_batch_3") == server.md5s["file_md5s"]["data_batch_3"]
    assert (folder / "test_batch").is_file() and server.requests == 1

    (root / "ciFAIR-10.zip").write_bytes(b"not the archive")  # ... and a corrupt archive is fetched again
    (folder / "data_batch_1").write_bytes(b"garbage")
    data.fetch_cifair10(root, server.url, **server.md5s)
    assert server.requests == 2 and md5(folder / "data_batch_1") == server.md5s["file_md5s"]["data_batch_1"]


def test_fetch_root_is_the_unpacked_folder(cifar_dir, server):
    assert data.fetch_cifair10(cifar_dir, server.url, **server.md5s) == cifar_dir
    assert server.requests == 0


def test_fetch_truncated_archive(tmp_path, server):
    root = tmp_path / "cache"
    server.payload = server.payload[: len(server.payload) // 2]
    with pytest.raises(DataError, match="incomplete or corrupt.*removed"):
        data.fetch_cifair10(root, server.url, **server.md5s)
    assert files_under(root) == []


def test_fetch_cut_off_download(tmp_path, server):
    root = tmp_path / "cache"
    server.length = len(server.payload)
    server.payload = server.payload[:1000]
    with pytest.raises(DataError, match="could not be downloaded|incomplete or corrupt"):
        data.fetch_cifair10(root, server.url, **server.md5s)
    assert files_under(root) == []


def test_fetch_corrupted_archive(tmp_path, server):
    root = tmp_path / "cache"
    corrupt = bytearray(server.payload)
    corrupt[200:210] = bytes(b ^ 0xFF for b in corrupt[200:210])
    server.payload = bytes(corrupt)
    with pytest.raises(DataError, match="incomplete or corrupt") as e:
        data.fetch_cifair10(root, server.url, **server.md5s)
    assert "\n" not in str(e.value) and files_under(root) == []


def test_fetch_archive_with_wrong_batches(tmp_path, server):
    root = tmp_path / "cache"
    md5s = dict(server.md5s, file_md5s=dict(server.md5s["file_md5s"], test_batch="0" * 32))
    with pytest.raises(DataError, match="test_batch unpacked from .* fail their md5 check"):
        data.fetch_cifair10(root, server.url, **md5s)
    assert not (root / "ciFAIR-10" / "test_batch").exists()


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/ciFAIR-10.zip"


def test_fetch_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    root = tmp_path / "cache"
    url = _closed_port_url()
    with pytest.raises(DataError) as e:
        data.fetch_cifair10(root, url)
    message = str(e.value)
    assert "\n" not in message and str(root) in message and "could not be downloaded" in message
    assert url in message and "PREFIT_DATA" in message and "dataset=cifar_dir dataset.path=DIR" in message
    assert files_under(root) == []

    monkeypatch.setenv("PREFIT_DATA", str(tmp_path / "env"))  # root None: $PREFIT_DATA
    with pytest.raises(DataError, match=str(tmp_path / "env")):
        data.load_images(DatasetConfig(name="cifair10", url=url))


def test_load_images_cifair10(tmp_path, server, monkeypatch):
    monkeypatch.setattr(data.cifar, "ARCHIVE_MD5", server.md5s["archive_md5"])
    monkeypatch.setattr(data.cifar, "FILE_MD5S", server.md5s["file_md5s"])
    images = data.load_images(DatasetConfig(name="cifair10", root=str(tmp_path), url=server.url, split="test"))
    assert len(images) == 10 and "ciFAIR-10" in images.source and server.requests == 1


def test_default_data_root(monkeypatch, tmp_path):
    monkeypatch.setenv("PREFIT_DATA", str(tmp_path))
    assert data.default_data_root() == tmp_path
    monkeypatch.delenv("PREFIT_DATA")
    root = data.default_data_root()
    assert root.name == "data" and "prefit" in str(root)


# ------------------------------------------------------------------------------------------ triples


def balanced(per_class: int, classes: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(classes), per_class))


def check_triples(labels: np.ndarray, triples: list[Triple], n: int) -> None:
    assert [t.triple for t in triples] == list(range(n))
    used = [i for t in triples for i in (t.target, t.same, t.other)]
    assert len(used) == len(set(used)) == 3 * n  # no image twice, in any role, across the run
    for t in triples:
        assert labels[t.same] == labels[t.target] != labels[t.other]


def test_draw_triples_distinct_and_labelled():
    labels = balanced(30)
    triples = draw_triples(labels, 20, seed=42)
    check_triples(labels, triples, 20)
    assert len({labels[t.target] for t in triples}) > 3  # targets spread over classes


def test_draw_triples_deterministic_and_prefix():
    labels = balanced(30)
    assert draw_triples(labels, 20, 42) == draw_triples(labels.copy(), 20, 42)
    assert draw_triples(labels, 20, 42) != draw_triples(labels, 20, 43)
    assert draw_triples(labels, 20, 42)[:5] == draw_triples(labels, 5, 42)
    assert draw_triples(labels, 0, 42) == []


def test_draw_triples_up_to_capacity():
    labels = balanced(30)  # 300 images: at most 100 triples
    assert max_triples(labels) == 100
    check_triples(labels, draw_triples(labels, 99, 1), 99)
    with pytest.raises(DataError, match="asked for 101 triples but 300 images .* allow at most 100"):
        draw_triples(labels, 101, 1)


def test_draw_triples_imbalanced():
    labels = np.array([0] * 12 + [1] + [2])  # two images can only be 'other'; at most 2 triples
    assert max_triples(labels) == 2
    check_triples(labels, draw_triples(labels, 2, 0), 2)
    with pytest.raises(DataError, match="at most 2"):
        draw_triples(labels, 3, 0)
    with pytest.raises(DataError, match="at most 0"):
        draw_triples(np.zeros(9, dtype=np.int64), 1, 0)  # one class: no other-class image


def _brute_max(labels: list[int]) -> int:
    """Most disjoint triples (two images of one class, one of another), by exhaustive search."""

    def best(left: tuple[int, ...]) -> int:
        if len(left) < 3:
            return 0
        a, rest = left[0], left[1:]
        result = best(rest)  # a unused
        for b, c in itertools.combinations(rest, 2):
            if len({labels[a], labels[b], labels[c]}) == 2:
                result = max(result, 1 + best(tuple(i for i in rest if i not in (b, c))))
        return result

    return best(tuple(range(len(labels))))


def test_max_triples_exact():
    rng = np.random.default_rng(0)
    for _ in range(60):
        labels = rng.integers(0, rng.integers(1, 5), size=rng.integers(0, 9))
        assert max_triples(labels) == _brute_max(labels.tolist()), labels


# ------------------------------------------------------------------------------------------ pool


def test_draw_pool():
    labels = balanced(30)
    triples = draw_triples(labels, 20, 42)
    exclude = [i for t in triples for i in (t.target, t.same, t.other)]
    pool = draw_pool(labels, 55, seed=7, exclude=exclude)
    assert pool.dtype == np.int64 and len(pool) == len(set(pool.tolist())) == 55
    assert not set(pool.tolist()) & set(exclude)
    counts = np.bincount(labels[pool], minlength=10)
    assert counts.max() - counts.min() <= 1
    np.testing.assert_array_equal(pool, draw_pool(labels, 55, seed=7, exclude=exclude))
    assert len(draw_pool(labels, 300 - 60, seed=7, exclude=exclude)) == 240
    with pytest.raises(DataError, match="pool of 241 images but only 240"):
        draw_pool(labels, 241, seed=7, exclude=exclude)


def test_draw_pool_balances_around_small_classes():
    labels = np.array([0] * 2 + [1] * 50 + [2] * 50)
    counts = np.bincount(labels[draw_pool(labels, 40, seed=0, exclude=[0])], minlength=3)
    assert counts.tolist() in ([1, 20, 19], [1, 19, 20])
    with pytest.raises(DataError, match="outside"):
        draw_pool(labels, 1, seed=0, exclude=[102])
