"""Oxford-IIIT Pet without TensorFlow: trimap mapping, mocked data through the pipeline, and
the TF-free builder preparing from a fake (offline) download."""

import io

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from regionloss_jax import data
from regionloss_jax.data import oxford_pet


@pytest.mark.parametrize("border, expected", [("class", [0, 1, 0, 2]), ("ignore", [0, 1, 0, 255])])
def test_trimap_lookup(border, expected):
  lut = oxford_pet.trimap_lut(border)
  assert lut[[0, 1, 2, 3]].tolist() == [255] + expected[1:]
  assert lut[2] == 0 and lut[200] == 255


def test_mocked_pet_through_the_pipeline(tmp_path):
  with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
    dataset = data.load(
      "oxford_iiit_pet", split="train", border="class", image_size=(32, 32), data_dir=tmp_path
    )
    assert dataset.class_names == ("background", "pet", "border")
    batches = list(
      data.make_pipeline(
        dataset, global_batch_size=3, train=True, num_epochs=1, shard_index=0, shard_count=1
      )
    )
  assert len(batches) == 2
  assert batches[0]["image"].shape == (3, 32, 32, 3)
  assert batches[0]["label"].shape == (3, 32, 32)
  assert set(np.unique(np.concatenate([b["label"] for b in batches]))) <= {0, 1, 2, 255}


def fake_download(root):
  """The extracted layout of the two Oxford-IIIT Pet archives, with three tiny examples.

  ``Abyssinian_5`` is on TFDS's list of bad files: here it is a 4-channel PNG named .jpg,
  which the stock builder fixes with TensorFlow and ours with Pillow.
  """
  images, annotations = root / "images" / "images", root / "annotations" / "annotations"
  (annotations / "trimaps").mkdir(parents=True)
  (annotations / "xmls").mkdir()
  images.mkdir(parents=True)
  rng = np.random.default_rng(0)
  for name in ("Abyssinian_1", "Abyssinian_5", "beagle_1"):
    pixels = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
    if name == "Abyssinian_5":
      buffer = io.BytesIO()
      Image.fromarray(np.dstack([pixels, pixels[..., :1]])).save(buffer, format="PNG")
      (images / f"{name}.jpg").write_bytes(buffer.getvalue())
    else:
      Image.fromarray(pixels).save(images / f"{name}.jpg", format="JPEG")
    trimap = np.full((12, 16), 2, np.uint8)
    trimap[3:9, 4:12] = 1
    trimap[3, 4:12] = 3
    Image.fromarray(trimap).save(annotations / "trimaps" / f"{name}.png")
  (annotations / "trainval.txt").write_text("Abyssinian_1 1 1 1\nAbyssinian_5 1 1 1\n")
  (annotations / "test.txt").write_text("beagle_1 5 2 1\n")
  return {"images": str(root / "images"), "annotations": str(root / "annotations")}


def test_tf_free_builder_prepares_offline(tmp_path, monkeypatch):
  paths = fake_download(tmp_path / "download")
  monkeypatch.setattr(
    tfds.download.DownloadManager, "download_and_extract", lambda self, urls: paths
  )
  dataset = data.load(
    "oxford_iiit_pet", split="train", border="ignore", image_size=(8, 8), data_dir=tmp_path / "tfds"
  )
  assert len(dataset) == 2
  for example in dataset.source:
    assert example["image"].shape == (12, 16, 3)  # The RGBA PNG became an RGB JPEG.
    trimap = example["segmentation_mask"][..., 0]
    assert trimap[5, 6] == 1 and trimap[0, 0] == 2 and trimap[3, 5] == 3
  batch = next(
    iter(
      data.make_pipeline(dataset, global_batch_size=2, train=False, shard_index=0, shard_count=1)
    )
  )
  assert set(np.unique(batch["label"])) <= {0, 1, 255}
  # Files written without TensorFlow are read by TFDS's stock builder too.
  stock = tfds.builder(
    "oxford_iiit_pet", data_dir=str(tmp_path / "tfds"), file_format="array_record"
  )
  assert stock.is_prepared() and len(stock.as_data_source("test")) == 1
