"""Decode once: the second load reads the cache; a changed source rebuilds it; writes are atomic."""

from __future__ import annotations

import os
import warnings

import numpy as np
import PIL.Image
import pytest
from dataset_fixtures import make_cifar10, make_cinic10, make_tinyimagenet

from fedprune.data import cifar10 as cifar10_module
from fedprune.data.cache import CACHE_DIRNAME
from fedprune.data.cifar10 import load_cifar10
from fedprune.data.cinic10 import load_cinic10
from fedprune.data.tinyimagenet import load_tinyimagenet
from fedprune.errors import DataError


@pytest.fixture
def count_image_opens(monkeypatch):
    """Counts calls of PIL.Image.open: each one is a decode."""
    calls = []
    original = PIL.Image.open

    def counting_open(fp, *args, **kwargs):
        calls.append(fp)
        return original(fp, *args, **kwargs)

    monkeypatch.setattr(PIL.Image, "open", counting_open)
    return calls


def _cache_files(root):
    folder = root / CACHE_DIRNAME
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.suffix != ".lock")


@pytest.mark.parametrize(
    ("make", "load"), [(make_cinic10, load_cinic10), (make_tinyimagenet, load_tinyimagenet)]
)
def test_second_load_decodes_nothing(tmp_path, count_image_opens, make, load):
    fx = make(tmp_path)
    count_image_opens.clear()  # the fixture reads its JPEGs back
    first = load(tmp_path)
    assert len(count_image_opens) == len(fx.files["train"]) + len(fx.files["test"])
    count_image_opens.clear()
    second = load(tmp_path)
    assert count_image_opens == []
    # Both loads map the same file: every client and worker shares one copy of the pixels.
    assert second.train.images.filename == first.train.images.filename
    np.testing.assert_array_equal(np.asarray(second.train.images), fx.images["train"])


def test_second_cifar10_load_reads_no_batch(tmp_path, monkeypatch):
    make_cifar10(tmp_path)
    load_cifar10(tmp_path)
    reads = []
    original = cifar10_module._read_images
    monkeypatch.setattr(
        cifar10_module, "_read_images", lambda *a: reads.append(a[0]) or original(*a)
    )
    load_cifar10(tmp_path)
    assert reads == []


def test_a_changed_source_file_rebuilds_only_its_split(tmp_path, count_image_opens):
    fx = make_cinic10(tmp_path)
    load_cinic10(tmp_path)
    before = _cache_files(tmp_path)
    changed = fx.files["train"][3]
    new = np.full((32, 32, 3), 7, dtype=np.uint8)
    PIL.Image.fromarray(new).save(changed)
    st = changed.stat()
    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    count_image_opens.clear()
    splits = load_cinic10(tmp_path)
    assert len(count_image_opens) == len(fx.files["train"])  # the test split was not decoded
    assert (splits.train.images[3] == 7).all()
    after = _cache_files(tmp_path)
    assert len(after) == len(before)  # the outdated train files were removed
    assert [n for n in after if n.startswith("cinic10-test")] == [
        n for n in before if n.startswith("cinic10-test")
    ]


def test_an_added_or_removed_file_rebuilds(tmp_path):
    fx = make_tinyimagenet(tmp_path)
    assert len(load_tinyimagenet(tmp_path).train) == 9
    fx.files["train"][0].unlink()
    assert len(load_tinyimagenet(tmp_path).train) == 8


def test_a_changed_cifar_batch_rebuilds(tmp_path):
    from dataset_fixtures import write_cifar_batch

    fx = make_cifar10(tmp_path)
    load_cifar10(tmp_path)
    write_cifar_batch(fx.folder / "test_batch", np.full((3, 3072), 9, np.uint8), [1, 2, 3], "t")
    splits = load_cifar10(tmp_path)
    assert len(splits.test) == 3 and (splits.test.images == 9).all()
    np.testing.assert_array_equal(splits.test.targets, [1, 2, 3])


def test_a_failed_decode_leaves_no_cache_and_no_temporary_file(tmp_path):
    fx = make_cinic10(tmp_path)
    fx.files["train"][-1].write_bytes(b"not a png")
    with pytest.raises(DataError):
        load_cinic10(tmp_path)
    assert [n for n in _cache_files(tmp_path) if n.startswith("cinic10-train")] == []


def test_an_interrupted_decode_leaves_no_cache(tmp_path, monkeypatch):
    fx = make_cinic10(tmp_path)
    original = PIL.Image.open
    calls = []

    def interrupted(fp, *args, **kwargs):
        calls.append(fp)
        if len(calls) == 7:
            raise KeyboardInterrupt
        return original(fp, *args, **kwargs)

    monkeypatch.setattr(PIL.Image, "open", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load_cinic10(tmp_path)
    assert _cache_files(tmp_path) == []
    monkeypatch.setattr(PIL.Image, "open", original)
    np.testing.assert_array_equal(
        np.asarray(load_cinic10(tmp_path).train.images), fx.images["train"]
    )


def test_temporary_files_of_dead_processes_are_cleaned_up(tmp_path):
    make_cinic10(tmp_path)
    cache = tmp_path / CACHE_DIRNAME
    cache.mkdir()
    abandoned = cache / "cinic10-train-0123456789abcdef0123.images.npy.999999999-abcd1234.tmp"
    abandoned.write_bytes(b"half written")
    load_cinic10(tmp_path)
    assert not abandoned.exists()


def test_an_unreadable_cache_file_is_rebuilt(tmp_path):
    fx = make_cifar10(tmp_path)
    first = load_cifar10(tmp_path)
    path = first.train.images.filename
    del first
    with open(path, "wb") as f:
        f.write(b"garbage")
    with pytest.warns(UserWarning, match=r"is unusable \(not a .npy file\); decoding the split"):
        reloaded = load_cifar10(tmp_path)
    np.testing.assert_array_equal(np.asarray(reloaded.train.images), fx.images["train"])


def _cache_file(root, split, kind):
    (path,) = (root / CACHE_DIRNAME).glob(f"cifar10-{split}-*.{kind}.npy")
    return path


def _truncated(path):
    return path.read_bytes()[: path.stat().st_size // 2]


@pytest.mark.parametrize(
    ("kind", "damage", "problem"),
    [
        ("images", lambda p: b"", "empty file"),
        ("labels", lambda p: b"", "empty file"),
        ("images", _truncated, "truncated or unreadable"),
        ("labels", _truncated, "truncated or unreadable"),
        ("labels", lambda p: _npy(np.full(30, 99)), r"labels outside 0\.\.9"),
        ("labels", lambda p: _npy(np.full(30, -1)), r"labels outside 0\.\.9"),
        ("labels", lambda p: _npy(np.zeros(29, np.int64)), "29 labels for 30 images"),
        ("labels", lambda p: _npy(np.zeros(30, np.float32)), "float32 \\(30,\\), expected int"),
        ("images", lambda p: _npy(np.zeros((30, 3, 16, 16), np.uint8)),
         r"uint8 \(30, 3, 16, 16\), expected uint8 \(N, 3, 32, 32\)"),
    ],
)
def test_a_damaged_cache_is_named_and_rebuilt(tmp_path, kind, damage, problem):
    fx = make_cifar10(tmp_path)
    load_cifar10(tmp_path)
    path = _cache_file(tmp_path, "train", kind)
    path.write_bytes(damage(path))
    with pytest.warns(UserWarning, match=rf"{path.name} is unusable \({problem}") as record:
        splits = load_cifar10(tmp_path)
    assert str(path) in str(record[0].message)
    np.testing.assert_array_equal(splits.train.targets, fx.labels["train"])
    np.testing.assert_array_equal(np.asarray(splits.train.images), fx.images["train"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_cifar10(tmp_path)  # rebuilt: no warning this time


def _npy(array):
    import io

    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_cli_rebuilds_an_empty_cache_instead_of_aborting(tmp_path):
    from click.testing import CliRunner

    from fedprune.cli_data import data

    make_cifar10(tmp_path)
    load_cifar10(tmp_path)
    _cache_file(tmp_path, "test", "images").write_bytes(b"")
    with pytest.warns(UserWarning, match="empty file"):
        result = CliRunner().invoke(data, ["prepare", "cifar10", "--root", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "Aborted" not in result.output and "30 training and 10 test images" in result.output


def test_info_shows_a_damaged_cache(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from fedprune.cli_data import data

    monkeypatch.setenv("COLUMNS", "400")
    make_cifar10(tmp_path)
    load_cifar10(tmp_path)
    _cache_file(tmp_path, "train", "labels").write_bytes(_npy(np.full(30, 99)))
    result = CliRunner().invoke(data, ["info", "cifar10", "--root", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "train: unusable (labels outside 0..9), decoded again on the next load" in result.output
    assert "test: built" in result.output


def test_a_read_only_cache_directory_says_how_to_choose_another(tmp_path, monkeypatch):
    from click.testing import CliRunner
    from dataset_fixtures import deny_writes

    from fedprune.cli_data import data

    make_cifar10(tmp_path)
    cache = tmp_path / CACHE_DIRNAME
    cache.mkdir()
    deny_writes(cache, monkeypatch)
    with pytest.raises(DataError) as info:
        load_cifar10(tmp_path)
    assert str(info.value) == (
        f"cannot write the decode cache directory {cache} (the default): Permission denied; "
        "set $FEDPRUNE_CACHE to a writable directory with free space"
    )
    result = CliRunner().invoke(data, ["prepare", "cifar10", "--root", str(tmp_path)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip() == f"Error: {info.value}"
    monkeypatch.setenv("FEDPRUNE_CACHE", str(tmp_path / "elsewhere"))
    assert len(load_cifar10(tmp_path).train) == 30


def test_a_damaged_cache_in_a_read_only_directory_is_named(tmp_path, monkeypatch):
    from dataset_fixtures import deny_writes

    make_cifar10(tmp_path)
    load_cifar10(tmp_path)
    path = _cache_file(tmp_path, "train", "images")
    path.write_bytes(b"")
    deny_writes(tmp_path / CACHE_DIRNAME, monkeypatch)
    with pytest.warns(UserWarning, match=rf"{path.name} is unusable \(empty file\)"):
        with pytest.raises(DataError, match=r"cannot write the decode cache directory"):
            load_cifar10(tmp_path)


def test_cache_location_can_be_overridden(tmp_path, monkeypatch):
    make_cifar10(tmp_path / "data")
    monkeypatch.setenv("FEDPRUNE_CACHE", str(tmp_path / "elsewhere"))
    load_cifar10(tmp_path / "data")
    assert not (tmp_path / "data" / CACHE_DIRNAME).exists()
    assert len(list((tmp_path / "elsewhere").glob("cifar10-*.npy"))) == 4


def test_an_unwritable_cache_location_says_how_to_fix_it(tmp_path, monkeypatch):
    make_cifar10(tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("FEDPRUNE_CACHE", str(blocker / "cache"))
    with pytest.raises(DataError, match=r"cannot write the decode cache directory .*CACHE to a"):
        load_cifar10(tmp_path)


def test_info_reports_the_cache_state(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from fedprune.cli_data import data

    monkeypatch.setenv("COLUMNS", "250")
    fx = make_cinic10(tmp_path)
    run = lambda: CliRunner().invoke(data, ["info", "cinic10", "--root", str(tmp_path)])  # noqa: E731
    result = run()
    assert result.exit_code == 0, result.output
    assert "present" in result.output and "train 20, test 20" in result.output
    assert "train: not built" in result.output
    load_cinic10(tmp_path)
    assert "train: built" in run().output
    fx.files["train"][0].unlink()
    result = run()
    assert "train: outdated" in result.output and "train 19" in result.output


def test_prepare_builds_the_cache_ahead_of_training(tmp_path, count_image_opens):
    from click.testing import CliRunner

    from fedprune.cli_data import data

    make_tinyimagenet(tmp_path)
    result = CliRunner().invoke(data, ["prepare", "tinyimagenet", "--root", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "9 training and 6 test images ready" in result.output
    count_image_opens.clear()
    load_tinyimagenet(tmp_path)
    assert count_image_opens == []


def test_concurrent_loads_decode_once(tmp_path, count_image_opens):
    import threading

    fx = make_cinic10(tmp_path, per_class=3)
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(load_cinic10(tmp_path))) for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3
    assert len(count_image_opens) == len(fx.files["train"]) + len(fx.files["test"])
    for splits in results:
        np.testing.assert_array_equal(np.asarray(splits.test.images), fx.images["test"])
