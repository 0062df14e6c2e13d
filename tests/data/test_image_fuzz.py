"""Fuzzing a folder's files: one odd or broken file among good ones. Preparation either
succeeds with the files' true content or raises ``DataError`` naming that file, leaving
nothing in the cache; a header declaring a huge image is refused before it is decoded."""

import io
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from regionloss_jax import data
from tests.data.helpers import write_pairs, write_png

REPO = __file__.rsplit("/tests/", 1)[0]
GOOD_PAIRS = 4


def _chunk(kind: bytes, body: bytes) -> bytes:
  crc = zlib.crc32(kind + body) & 0xFFFFFFFF
  return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)


def huge_png(width: int, height: int, body: bytes = b"\0" * 64) -> bytes:
  """A valid PNG signature and grey-scale IHDR declaring ``width x height``, with a tiny
  (or, for a real bomb, highly compressed) IDAT."""
  header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
  return (
    b"\x89PNG\r\n\x1a\n"
    + _chunk(b"IHDR", header)
    + _chunk(b"IDAT", zlib.compress(body))
    + _chunk(b"IEND", b"")
  )


def _encoded(array: np.ndarray, fmt: str) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format=fmt)
  return buffer.getvalue()


def _cache_files(cache):
  return sorted(p for p in cache.rglob("*") if p.is_file()) if cache.exists() else []


def _prepared(root, cache) -> dict:
  """Every example of every split by file name, at native size."""
  options = dict(root=root, num_classes=3, image_size=None, cache_dir=cache)
  return {
    ex["file_name"].decode(): ex
    for split in ("train", "validation", "test")
    for ex in data.load("folder", split=split, **options).source
  }


def _odd_case(rng, kind: str):
  """``(image, mask, written image, written mask, name)``: arrays as true content, and the
  file bytes (``None``: write the array as PNG)."""
  h, w = (1, 5) if kind == "one_row" else (9, 13)
  mask = rng.integers(0, 3, (h, w)).astype(np.uint8)
  image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
  if kind == "palette_mask":  # VOC-style: palette indices are the class ids
    written = Image.frombytes("P", (w, h), mask.tobytes())
    written.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (256 * 3 - 9))
    buffer = io.BytesIO()
    written.save(buffer, format="PNG")
    return image, mask, None, buffer.getvalue()
  if kind == "palette_image":  # expanded to the colours it shows
    palette = rng.integers(0, 256, (256, 3), dtype=np.uint8)
    indices = rng.integers(0, 256, (h, w)).astype(np.uint8)
    written = Image.frombytes("P", (w, h), indices.tobytes())
    written.putpalette(palette.ravel().tolist())
    buffer = io.BytesIO()
    written.save(buffer, format="PNG")
    return palette[indices], mask, buffer.getvalue(), None
  if kind == "grey16_mask":  # 16-bit masks hold class ids too
    return image, mask, None, _encoded(mask.astype(np.uint16), "PNG")
  if kind == "mode1_mask":  # 1-bit masks: 0 / 1
    binary = (mask > 0).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(binary * 255).convert("1").save(buffer, format="PNG")
    return image, binary, None, buffer.getvalue()
  return image, mask, None, None  # one_row


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(
  kind=st.sampled_from(["palette_mask", "palette_image", "grey16_mask", "mode1_mask", "one_row"]),
  seed=st.integers(0, 2**16),
)
def test_odd_but_valid_files_are_prepared_with_their_true_content(tmp_path_factory, kind, seed):
  tmp = tmp_path_factory.mktemp("odd")
  root = write_pairs(tmp / "ds", "train", GOOD_PAIRS, size=(9, 13))
  image, mask, image_bytes, mask_bytes = _odd_case(np.random.default_rng(seed), kind)
  for sub, array, written in (("images", image, image_bytes), ("masks", mask, mask_bytes)):
    path = root / "train" / sub / "odd.png"
    if written is None:
      write_png(path, array)
    else:
      path.write_bytes(written)
  example = _prepared(root, tmp / "cache")["odd.png"]
  np.testing.assert_array_equal(example["image"], image)
  np.testing.assert_array_equal(example["segmentation_mask"][..., 0], mask)
  assert tuple(example["original_shape"]) == mask.shape


def _broken_bytes(kind: str, cut: float, truth: np.ndarray) -> bytes:
  if kind in ("truncated_png", "truncated_jpeg"):
    encoded = _encoded(truth, "PNG" if kind == "truncated_png" else "JPEG")
    return encoded[: max(1, int(cut * len(encoded)))]
  if kind == "zero_byte":
    return b""
  if kind == "huge_header":  # Pillow itself refuses beyond twice its limit
    return huge_png(100_000, 100_000)
  if kind == "over_the_limit":  # between the limit and twice it, Pillow only warns
    return huge_png(12_000, 12_000)
  raise AssertionError(kind)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(
  kind=st.sampled_from(
    ["truncated_png", "truncated_jpeg", "zero_byte", "huge_header", "over_the_limit"]
  ),
  which=st.sampled_from(["images", "masks"]),
  cut=st.floats(0.0, 0.999),
  seed=st.integers(0, 2**16),
)
# Cut inside the IEND chunk, after the image data: these decode, to the true pixels.
@example(kind="truncated_png", which="images", cut=0.999, seed=0)
@example(kind="truncated_png", which="masks", cut=0.999, seed=0)
def test_one_broken_file_is_named_and_nothing_is_written(tmp_path_factory, kind, which, cut, seed):
  tmp = tmp_path_factory.mktemp("broken")
  root = write_pairs(tmp / "ds", "train", GOOD_PAIRS, size=(9, 13))
  rng = np.random.default_rng(seed)
  truth = {
    "images": rng.integers(0, 256, (9, 13, 3), dtype=np.uint8),
    "masks": rng.integers(0, 3, (9, 13)).astype(np.uint8),
  }
  other = "masks" if which == "images" else "images"
  write_png(root / "train" / other / "odd.png", truth[other])
  suffix = ".jpg" if kind == "truncated_jpeg" else ".png"
  bad = root / "train" / which / f"odd{suffix}"
  bad.write_bytes(_broken_bytes(kind, cut, truth[which]))
  cache = tmp / "cache"
  try:
    prepared = _prepared(root, cache)
  except data.DataError as error:
    (problem,) = error.problems
    assert problem.startswith(f"{bad}: "), problem
    assert _cache_files(cache) == []
    return
  # Only a PNG cut after its last image data decodes, and then to exactly what was written.
  assert kind == "truncated_png", kind
  example = prepared["odd.png"]
  np.testing.assert_array_equal(example["image"], truth["images"])
  np.testing.assert_array_equal(example["segmentation_mask"][..., 0], truth["masks"])


@pytest.mark.parametrize("shape", [(1, 1), (1, 2), (2, 1)])
def test_images_of_under_3_pixels_are_named_at_native_size_and_resized_otherwise(tmp_path, shape):
  root = write_pairs(tmp_path / "ds", "train", GOOD_PAIRS, size=(9, 13))
  write_png(root / "train" / "images" / "tiny.png", np.full((*shape, 3), 77, np.uint8))
  bad = write_png(root / "train" / "masks" / "tiny.png", np.full(shape, 2, np.uint8))
  # TFDS wrote such a mask but failed every read of it, with a traceback mid-training.
  with pytest.raises(data.DataError) as error:
    _prepared(root, tmp_path / "native")
  assert error.value.problems == [
    f"{bad}: {shape[0]}x{shape[1]} is too small to store at native resolution (at least 3 "
    "pixels); remove it or set a fixed size to resize to"
  ]
  assert _cache_files(tmp_path / "native") == []
  options = dict(root=root, num_classes=3, image_size=(4, 6), cache_dir=tmp_path / "resized")
  (example,) = [
    ex
    for split in ("train", "validation", "test")
    for ex in data.load("folder", split=split, **options).source
    if ex["file_name"] == b"tiny.png"
  ]
  np.testing.assert_array_equal(example["image"], np.full((4, 6, 3), 77, np.uint8))
  np.testing.assert_array_equal(example["segmentation_mask"], np.full((4, 6, 1), 2, np.uint8))


def test_float_images_holding_nan_are_named(tmp_path):
  root = write_pairs(tmp_path / "ds", "train", GOOD_PAIRS, size=(9, 13))
  image = np.linspace(0, 1, 9 * 13, dtype=np.float32).reshape(9, 13)
  image[2, 3] = np.nan
  bad = root / "train" / "images" / "nan.tif"
  Image.fromarray(image).save(bad)  # mode "F"
  write_png(root / "train" / "masks" / "nan.png", np.zeros((9, 13), np.uint8))
  with pytest.raises(data.DataError) as error:
    _prepared(root, tmp_path / "cache")
  assert error.value.problems == [f"{bad}: image holds 1 NaN or infinite value(s)"]
  assert _cache_files(tmp_path / "cache") == []


# Loads files.py alone (Pillow and numpy, not the whole data package) so that the peak
# memory it measures is the file's.
BOMB = """
import importlib.util, resource, sys
spec = importlib.util.spec_from_file_location("files", sys.argv[1])
files = sys.modules["files"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(files)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
  files.read_image(sys.argv[2])
except ValueError as error:
  print("refused:", error)
print("grew_mib", (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


def test_a_decompression_bomb_is_refused_before_it_is_decoded(tmp_path):
  # 9,500 x 9,500 grey zeros: 90 MB of pixels in 90 kB, just over Pillow's limit, where
  # Pillow only warns and decodes (then our conversions copy it twice more).
  side = 9_500
  assert side * side > Image.MAX_IMAGE_PIXELS
  bomb = tmp_path / "bomb.png"
  bomb.write_bytes(huge_png(side, side, body=b"\0" * ((side + 1) * side)))
  assert bomb.stat().st_size < 1_000_000
  result = subprocess.run(
    [sys.executable, "-c", BOMB, data.files.__file__, str(bomb)],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-2000:]
  assert f"refused: header declares {side}x{side} pixels" in result.stdout
  grew = int(result.stdout.split("grew_mib")[1])
  assert grew < 40, result.stdout  # decoding alone would touch 90 MiB


def test_volumes_holding_nan_or_under_4_voxels_are_named(tmp_path):
  root = tmp_path / "vols"
  rng = np.random.default_rng(0)
  for sub in ("images", "masks"):
    (root / "train" / sub).mkdir(parents=True)
  for i in range(GOOD_PAIRS):
    np.save(root / "train" / "images" / f"v{i}.npy", rng.random((4, 5, 6), dtype=np.float32))
    np.save(root / "train" / "masks" / f"v{i}.npy", rng.integers(0, 3, (4, 5, 6)).astype(np.uint8))
  volume = rng.random((4, 5, 6), dtype=np.float32)
  volume[1, 2, 3] = np.inf
  nan = root / "train" / "images" / "nan.npy"
  np.save(nan, volume)
  np.save(root / "train" / "masks" / "nan.npy", np.zeros((4, 5, 6), np.uint8))
  np.save(root / "train" / "images" / "tiny.npy", np.ones((1, 1, 3), np.float32))
  tiny = root / "train" / "masks" / "tiny.npy"
  np.save(tiny, np.ones((1, 1, 3), np.uint8))
  cache = tmp_path / "cache"
  with pytest.raises(data.DataError) as error:
    data.load("volumes", root=root, num_classes=3, shape=None, cache_dir=cache)
  assert sorted(error.value.problems) == [
    f"{nan}: volume holds 1 NaN or infinite value(s)",
    f"{tiny}: 1x1x3 is too small to store at native resolution (at least 4 pixels); remove "
    "it or set a fixed size to resize to",
  ]
  assert _cache_files(cache) == []
