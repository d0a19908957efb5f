from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pneumo.data.cache import ImageCache
from pneumo.data.decode import ImageDecodeError, decode_image
from pneumo.data.preprocess import PreprocessContract, preprocess_image, resize_gray


def _images(tmp_path: Path, n: int = 6) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (40 + i, 60), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def _bump_mtime(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_cache_equals_direct_preprocessing(tmp_path: Path) -> None:
    contract = PreprocessContract(image_size=32)
    paths = _images(tmp_path)
    cached = ImageCache(contract, tmp_path / "cache").build(paths, progress=False)
    assert cached.ok.all() and cached.failures == []
    for i, p in enumerate(paths):
        np.testing.assert_array_equal(cached[i], preprocess_image(p, contract))


def test_changed_and_added_files_only_are_redone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    contract = PreprocessContract(image_size=16)
    cache = ImageCache(contract, tmp_path / "cache")
    paths = _images(tmp_path, 4)
    first = cache.build(paths, progress=False)

    decoded: list[str] = []
    import pneumo.data.cache as cache_module

    real = cache_module._decode_one
    monkeypatch.setattr(cache_module, "_decode_one", lambda a: (decoded.append(a[0]), real(a))[1])

    assert cache.build(paths, progress=False).rows.tolist() == first.rows.tolist()
    assert decoded == []  # nothing changed, nothing decoded

    Image.fromarray(np.zeros((40, 40), np.uint8)).save(paths[1])
    _bump_mtime(paths[1])
    new = tmp_path / "new.png"
    Image.fromarray(np.full((48, 48), 200, np.uint8)).save(new)
    again = cache.build([*paths, new], progress=False)
    assert sorted(Path(p).name for p in decoded) == ["img1.png", "new.png"]
    np.testing.assert_array_equal(again[1], np.zeros((16, 16), np.uint8))
    np.testing.assert_array_equal(again[4], np.full((16, 16), 200, np.uint8))
    np.testing.assert_array_equal(again[0], first[0])
    # a changed file gets a new row: a view opened before (a running training) still reads what it started with
    assert again.rows[1] not in first.rows.tolist()
    assert first[1].std() > 0 and again[1].std() == 0


def test_a_same_size_replacement_that_kept_the_mtime_is_redone(tmp_path: Path) -> None:
    """cp -p, rsync -a and tar keep the mtime; an uncompressed format keeps the size: the ctime still changes."""
    contract = PreprocessContract(image_size=8)
    cache = ImageCache(contract, tmp_path / "cache")
    path = tmp_path / "x.bmp"
    Image.fromarray(np.full((32, 32), 30, np.uint8)).save(path)
    assert cache.build([path], progress=False)[0].max() == 30
    st = path.stat()
    time.sleep(0.01)  # a later ctime
    Image.fromarray(np.full((32, 32), 220, np.uint8)).save(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns
    assert cache.build([path], progress=False)[0].min() == 220


def test_a_cache_written_before_ctime_was_recorded_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    contract = PreprocessContract(image_size=8)
    cache = ImageCache(contract, tmp_path / "cache")
    paths = _images(tmp_path, 2)
    first = cache.build(paths, progress=False)
    index = json.loads(cache.index_file.read_text())
    for entry in index["entries"].values():
        del entry["ctime_ns"], entry["ino"]
    cache.index_file.write_text(json.dumps(index))
    import pneumo.data.cache as cache_module

    monkeypatch.setattr(cache_module, "_decode_one", lambda a: pytest.fail(f"decoded {a[0]} again"))
    assert cache.build(paths, progress=False).rows.tolist() == first.rows.tolist()
    assert all("ctime_ns" in e for e in json.loads(cache.index_file.read_text())["entries"].values())


def test_a_file_that_could_not_be_read_is_tried_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A permission or I/O error may pass (chmod, a network share back): unlike a corrupt file, it is not final."""
    contract = PreprocessContract(image_size=8)
    cache = ImageCache(contract, tmp_path / "cache")
    path = _images(tmp_path, 1)[0]
    import builtins

    import pneumo.data.decode as decode_module

    def denied(file, *args, **kwargs):
        if Path(file) == path:
            raise PermissionError(13, "Permission denied")
        return builtins.open(file, *args, **kwargs)

    monkeypatch.setattr(decode_module, "open", denied, raising=False)  # the decoder's reads only
    failed = cache.build([path], progress=False)
    assert not failed.ok.any() and failed.failures == [(path, "cannot read file (Permission denied)")]
    monkeypatch.delattr(decode_module, "open")
    assert cache.build([path], progress=False).ok.all()


def test_contracts_differing_in_normalisation_share_the_cache_without_clobbering(tmp_path: Path) -> None:
    """mean/std act after the cache, so both contracts use one folder; building with one must neither renumber
    nor re-decode the rows the other's open view reads."""
    paths = _images(tmp_path, 3)
    plain = PreprocessContract(image_size=16)
    other = PreprocessContract(image_size=16, mean=0.5, std=0.25)
    view = ImageCache(plain, tmp_path / "cache").build(paths, progress=False)
    expected = [view[i].copy() for i in range(3)]
    other_view = ImageCache(other, tmp_path / "cache").build(paths[::-1], progress=False)
    assert other_view.rows.tolist() == view.rows[::-1].tolist()  # the same rows, nothing decoded again
    view._array = None  # re-map the file, as a new reader would
    for i in range(3):
        np.testing.assert_array_equal(view[i], expected[i])


def test_a_deleted_pixel_file_is_rebuilt_not_read_as_black(tmp_path: Path) -> None:
    contract = PreprocessContract(image_size=16)
    cache = ImageCache(contract, tmp_path / "cache")
    paths = _images(tmp_path, 2)
    first = cache.build(paths, progress=False)
    expected = [first[i].copy() for i in range(2)]
    assert any(e.any() for e in expected)
    cache.file.unlink()  # e.g. freeing disk space; index.json stays behind
    again = cache.build(paths, progress=False)
    for i in range(2):
        np.testing.assert_array_equal(again[i], expected[i])


def test_pixels_from_other_decoding_code_are_not_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Same files, same contract, but a decoder revision (or Pillow) that may produce other pixels: decode again."""
    import pneumo.data.cache as cache_module

    contract = PreprocessContract(image_size=16)
    paths = _images(tmp_path, 2)
    ImageCache(contract, tmp_path / "cache").build(paths, progress=False)

    decoded: list[str] = []
    real = cache_module._decode_one
    monkeypatch.setattr(cache_module, "_decode_one", lambda a: (decoded.append(a[0]), real(a))[1])
    ImageCache(contract, tmp_path / "cache").build(paths, progress=False)
    assert decoded == []
    monkeypatch.setattr(cache_module, "DECODER_REVISION", cache_module.DECODER_REVISION + 1)
    ImageCache(contract, tmp_path / "cache").build(paths, progress=False)
    assert len(decoded) == 2
    monkeypatch.setattr(cache_module.PIL, "__version__", "0.0.0")
    ImageCache(contract, tmp_path / "cache").build(paths, progress=False)
    assert len(decoded) == 4


def test_a_damaged_index_is_rebuilt_not_fatal(tmp_path: Path) -> None:
    contract = PreprocessContract(image_size=16)
    paths = _images(tmp_path, 2)
    expected = [row.copy() for row in ImageCache(contract, tmp_path / "cache").build(paths, progress=False)]
    cache = ImageCache(contract, tmp_path / "cache")
    cache.index_file.write_text('{"entries": {')  # cut short, as a crash or a full disk can leave it
    again = cache.build(paths, progress=False)
    for i in range(2):
        np.testing.assert_array_equal(again[i], expected[i])


def test_corrupt_empty_and_text_files_are_reported_not_fatal(tmp_path: Path) -> None:
    good = _images(tmp_path, 2)
    empty = tmp_path / "empty.jpeg"
    empty.write_bytes(b"")
    text = tmp_path / "notes.png"
    text.write_text("this is not a picture")
    truncated = tmp_path / "trunc.jpeg"
    Image.fromarray(np.full((64, 64), 90, np.uint8)).save(truncated, quality=90)
    truncated.write_bytes(truncated.read_bytes()[:200])
    cached = ImageCache(PreprocessContract(image_size=16), tmp_path / "c").build(
        [good[0], empty, text, truncated, good[1]], workers=2, progress=False
    )
    assert cached.ok.tolist() == [True, False, False, False, True]
    reasons = {p.name: r for p, r in cached.failures}
    assert reasons["empty.jpeg"] == "file is empty"
    assert "not a supported image" in reasons["notes.png"]
    assert "truncated or corrupt" in reasons["trunc.jpeg"]
    with pytest.raises(ImageDecodeError, match=r"notes\.png: not a supported image"):
        decode_image(text)


def test_cached_view_pickles_without_the_array(tmp_path: Path) -> None:
    import pickle

    cached = ImageCache(PreprocessContract(image_size=16), tmp_path / "c").build(_images(tmp_path, 2), progress=False)
    _ = cached.array
    clone = pickle.loads(pickle.dumps(cached))
    assert clone._array is None
    np.testing.assert_array_equal(clone[1], cached[1])


@pytest.mark.parametrize("geometry", ["squash", "center-crop", "letterbox"])
def test_geometries(geometry: str) -> None:
    gray = np.zeros((20, 40), np.uint8)
    gray[:, :10] = 255  # a bright band on the left quarter
    out = resize_gray(gray, PreprocessContract(image_size=20, geometry=geometry))  # type: ignore[arg-type]
    assert out.shape == (20, 20)
    if geometry == "squash":
        assert out[:, :4].min() > 200 and out[:, 6:].max() < 60  # the band keeps its quarter
    elif geometry == "center-crop":
        assert out.max() == 0  # the band lies outside the central square
    else:
        assert out[:4].max() == 0 and out[-4:].max() == 0  # black bars top and bottom


def test_letterbox_never_builds_a_canvas_larger_than_the_model_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """Padding to max(w, h)^2 before resizing cost 1.6 GB for a 40000 x 25 image (1 megapixel, under any limit)."""
    from PIL import Image as PILImage

    made: list[tuple[int, int]] = []
    real_new = PILImage.new
    monkeypatch.setattr(
        PILImage, "new", lambda mode, size, *a, **k: (made.append(size), real_new(mode, size, *a, **k))[1]
    )
    strip = np.full((25, 40000), 255, np.uint8)
    out = resize_gray(strip, PreprocessContract(image_size=32, geometry="letterbox"))
    assert made and all(w * h <= 32 * 32 for w, h in made)
    assert out.shape == (32, 32) and out[15].min() == 255 and out[:15].max() == 0 and out[16:].max() == 0
    # a square image fills the canvas; a 2:1 one keeps its aspect between bars of a quarter each
    np.testing.assert_array_equal(resize_gray(np.full((64, 64), 9, np.uint8), PreprocessContract(32, "letterbox")), 9)
    wide = resize_gray(np.full((32, 64), 200, np.uint8), PreprocessContract(image_size=32, geometry="letterbox"))
    assert wide[8:24].min() == 200 and wide[:8].max() == 0 and wide[24:].max() == 0


def test_squash_matches_how_the_shared_copy_was_made(tmp_path: Path) -> None:
    """The shared data README: Image.open -> convert RGB -> resize((224, 224), BILINEAR)."""
    rng = np.random.default_rng(1)
    original = Image.fromarray(rng.integers(0, 256, (300, 450), dtype=np.uint8))
    expected = np.asarray(original.convert("RGB").resize((224, 224), Image.Resampling.BILINEAR))[..., 0]
    np.testing.assert_array_equal(preprocess_image(original, PreprocessContract(image_size=224)), expected)


def test_decode_modes() -> None:
    rgba = Image.fromarray(np.dstack([np.full((32, 32), 200, np.uint8)] * 3 + [np.zeros((32, 32), np.uint8)]), "RGBA")
    assert decode_image(rgba).max() == 0  # fully transparent composites onto black
    deep = Image.fromarray(np.array([[0, 1000], [2000, 4095]], dtype=np.uint16))
    assert decode_image(deep, min_side=1).tolist() == [[0, 62], [125, 255]]
    palette = Image.fromarray(np.full((32, 32), 77, np.uint8)).convert("P")
    assert decode_image(palette).max() == 77


def test_pixel_limit() -> None:
    with pytest.raises(ImageDecodeError, match="exceeds the limit"):
        decode_image(np.zeros((100, 100), np.uint8), max_pixels=5000)


def test_cached_rows_are_read_without_the_source_files(tmp_path: Path) -> None:
    """Later epochs read the cache only: the files can even be gone."""
    paths = _images(tmp_path, 3)
    contract = PreprocessContract(image_size=16)
    expected = [preprocess_image(p, contract) for p in paths]
    cached = ImageCache(contract, tmp_path / "c").build(paths, progress=False)
    for p in paths:
        p.unlink()
    for i, image in enumerate(expected):
        np.testing.assert_array_equal(cached[i], image)


def test_dicom_pixel_limit_is_checked_before_decoding(tmp_path: Path) -> None:
    from inference.conftest import dicom_announcing

    path = tmp_path / "big.dcm"
    path.write_bytes(dicom_announcing(3000, 3000))  # the header claims 9 MP; the pixel data is far too short for that
    with pytest.raises(ImageDecodeError, match=r"3000x3000 pixels exceeds the limit of 1000000"):
        decode_image(path, max_pixels=1_000_000)


def test_another_pydicom_gets_another_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """DICOM pixels depend on pydicom's LUT handling: a cache made with one version is not read with another."""
    import pneumo.data.cache as cache_module

    contract = PreprocessContract(image_size=8)
    before = ImageCache(contract, tmp_path).dir
    monkeypatch.setattr(cache_module, "_version", lambda package: "9.9" if package == "pydicom" else "x")
    assert ImageCache(contract, tmp_path).dir != before and "pydicom9.9" in ImageCache(contract, tmp_path).dir.name


@pytest.mark.parametrize(
    "damage",
    ['{"contract": ', '{"contract": {"image_size": 16}, "n_rows": 3}', '{"entries": [], "failures": {}, "n_rows": 2}'],
)
def test_a_new_index_never_writes_over_rows_others_may_read(tmp_path: Path, damage: str) -> None:
    # a damaged index restarted at row 0: the next build wrote other images' pixels into rows a running process
    # still read through the index it had loaded (its open view changed under it); valid JSON of another shape
    # failed every later build with a KeyError
    contract = PreprocessContract(image_size=16)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first_paths, other_paths = _images(tmp_path / "a", 3), _images(tmp_path / "b", 7)[3:]
    cache = ImageCache(contract, tmp_path / "cache")
    view = cache.build(first_paths, progress=False)
    before = [view[i].copy() for i in range(3)]
    cache.index_file.write_text(damage)
    again = ImageCache(contract, tmp_path / "cache").build(other_paths, progress=False)
    assert again.ok.all() and min(again.rows) >= 3  # after the rows already in the file
    for i in range(3):
        np.testing.assert_array_equal(view[i], before[i])
    for i, p in enumerate(other_paths):
        np.testing.assert_array_equal(again[i], preprocess_image(p, contract))


def test_a_full_disk_is_an_error_before_any_pixel_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the file grew sparse, and the first write through the map on a full disk killed the process with SIGBUS
    import errno

    def no_space(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_space, raising=False)
    with pytest.raises(OSError, match="No space left"):
        ImageCache(PreprocessContract(image_size=16), tmp_path / "cache").build(_images(tmp_path, 2), progress=False)
