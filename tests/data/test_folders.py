import numpy as np
import pytest
from PIL import Image

import tflite_pipeline as tp
from tflite_pipeline.data.folders import ImageFolder, open_splits, read_labels
from tflite_pipeline.data.preprocess import PreprocessSpec

pytestmark = pytest.mark.fast  # `make test-fast`: no model is built here


def write(path, array, mode=None, **save_args):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path, **save_args)
    return path


def make_folder(root, classes=("a", "b"), per_class=2):
    for c in classes:
        for i in range(per_class):
            write(root / c / f"{i}.png", np.full((6, 6), 40 * i, np.uint8))
    return root


@pytest.mark.parametrize("normalization, pixel, expected", [
    ("minus_one_to_one", [0, 255, 51], [-1.0, 1.0, 51 / 127.5 - 1]),
    ("zero_to_one", [0, 255, 51], [0.0, 1.0, 0.2]),
    ("raw", [0, 255, 51], [0.0, 255.0, 51.0]),
])
def test_normalization_formulas(normalization, pixel, expected):
    spec = PreprocessSpec(1, 1, normalization=normalization)
    out = spec.normalize(np.array(pixel, np.uint8).reshape(1, 1, 3))
    np.testing.assert_allclose(out.ravel(), expected, rtol=1e-6)


def test_mean_std_normalization_is_per_channel():
    spec = PreprocessSpec(1, 1, normalization="mean_std", mean=(0.5, 0.4, 0.3), std=(0.5, 0.2, 0.1))
    out = spec.normalize(np.array([255, 102, 0], np.uint8).reshape(1, 1, 3))
    np.testing.assert_allclose(out.ravel(), [1.0, 0.0, -3.0], rtol=1e-5)


@pytest.mark.parametrize("mode, suffix", [("L", ".png"), ("RGB", ".jpg"), ("RGBA", ".png"), ("P", ".png"),
                                          ("I;16", ".png"), ("CMYK", ".jpg")])
def test_any_image_mode_loads_as_rgb_at_model_size(tmp_path, mode, suffix):
    gray = np.tile(np.arange(0, 250, 25, dtype=np.uint8), (10, 1))
    image = Image.fromarray(gray, "L").convert("RGB" if mode in ("RGBA", "P", "CMYK") else "L")
    if mode == "I;16":
        image = Image.frombytes("I;16", gray.shape[::-1], (gray.astype("<u2") * 257).tobytes())
    else:
        image = image.convert(mode)
    image.save(tmp_path / f"x{suffix}")
    pixels = PreprocessSpec(5, 7).load_pixels(tmp_path / f"x{suffix}")
    assert pixels.shape == (5, 7, 3) and pixels.dtype == np.uint8
    assert abs(int(pixels[:, -1].mean()) - 225) < 20 and int(pixels[:, 0].mean()) < 40  # gradient kept


def test_class_order_comes_from_labels_txt_else_sorted_folders(tmp_path):
    root = make_folder(tmp_path / "d", classes=("zebra", "apple"))
    assert ImageFolder.scan(root).class_names == ("apple", "zebra")
    folder = ImageFolder.scan(root, ["zebra", "apple"])
    assert folder.class_names == ("zebra", "apple")
    assert folder.labels == (0, 0, 1, 1) and "zebra" in folder.files[0]


def test_flat_folder_serves_validation_and_calibration(tmp_path):
    root = make_folder(tmp_path / "flat")
    splits = open_splits(root, need_train=False)
    assert splits.validation is splits.calibration and splits.train is None
    with pytest.raises(tp.DataError, match="training needs them"):
        open_splits(root, need_train=True)


def test_dataset_streams_preprocessed_batches_in_file_order(tmp_path):
    root = make_folder(tmp_path / "d", per_class=3)
    folder = ImageFolder.scan(root)
    spec = PreprocessSpec(4, 4, normalization="zero_to_one")
    batches = list(folder.batches(spec, batch_size=4))
    assert [len(labels) for _, labels in batches] == [4, 2]
    images = np.concatenate([b for b, _ in batches])
    np.testing.assert_allclose(images[1], spec.load(folder.files[1]))
    assert images.dtype == np.float32 and images.shape[1:] == (4, 4, 3)


def test_spec_round_trips_through_json(tmp_path):
    spec = PreprocessSpec(32, 48, normalization="mean_std", mean=(0.1, 0.2, 0.3), std=(1.0, 2.0, 3.0))
    (tmp_path / "p.json").write_text(__import__("json").dumps(spec.to_dict()))
    assert PreprocessSpec.read_json(tmp_path / "p.json") == spec


# --- bad input: a typed error that names the problem -----------------------------------------

def test_missing_data_folder(tmp_path):
    with pytest.raises(tp.DataError, match=r"does not exist"):
        ImageFolder.scan(tmp_path / "nowhere")


def test_empty_data_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(tp.DataError, match=r"has no class sub-folders"):
        ImageFolder.scan(tmp_path / "empty")


def test_class_folder_without_images(tmp_path):
    root = make_folder(tmp_path / "d")
    (root / "c").mkdir()
    with pytest.raises(tp.DataError, match=r"Class folder '.*/c' has no images"):
        ImageFolder.scan(root)


def test_file_that_is_not_an_image(tmp_path):
    root = make_folder(tmp_path / "d")
    (root / "a" / "notes.txt").write_text("hello")
    with pytest.raises(tp.DataError, match=r"not images: \['notes.txt'\]"):
        ImageFolder.scan(root)


def test_text_file_named_png(tmp_path):
    root = make_folder(tmp_path / "d")
    (root / "b" / "fake.png").write_text("not a png")
    with pytest.raises(tp.DataError, match=r"Cannot decode image .*fake.png"):
        ImageFolder.scan(root)


def test_truncated_image_fails_while_streaming_with_its_name(tmp_path):
    root = make_folder(tmp_path / "d")
    good = write(tmp_path / "big.png", np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
    (root / "a" / "cut.png").write_bytes(good.read_bytes()[:300])
    folder = ImageFolder.scan(root, check_images=False)
    with pytest.raises(tp.DataError, match=r"Cannot decode image .*cut.png"):
        list(folder.batches(PreprocessSpec(8, 8), batch_size=2))


def test_labels_that_do_not_match_folders(tmp_path):
    root = make_folder(tmp_path / "d")
    with pytest.raises(tp.DataError, match=r"missing folders \['c'\], folders not in the labels \['b'\]"):
        ImageFolder.scan(root, ["a", "c"])


def test_empty_labels_file(tmp_path):
    (tmp_path / "labels.txt").write_text("\n\n")
    with pytest.raises(tp.DataError, match="is empty"):
        read_labels(tmp_path / "labels.txt")
