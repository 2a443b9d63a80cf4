"""Caption galleries: COCO and Karpathy layouts, and one clear error per bad input."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from captum_clip.datasets import load_captions
from captum_clip.testbed.captions import write_caption_gallery


def _images(root, names):
    root.mkdir(parents=True, exist_ok=True)
    for i, n in enumerate(names):
        Image.new("RGB", (8, 8), (10 * i, 0, 0)).save(root / n)


def _coco(tmp_path, images, annotations):
    path = tmp_path / "captions.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations}))
    return path


def test_coco_layout_groups_captions_in_file_order(tmp_path):
    _images(tmp_path / "img", ["a.png", "b.png", "c.png"])
    path = _coco(
        tmp_path,
        [{"id": 7, "file_name": "a.png"}, {"id": 3, "file_name": "b.png"},
         {"id": 5, "file_name": "c.png"}],
        [{"id": 1, "image_id": 3, "caption": "b one"}, {"id": 2, "image_id": 7, "caption": "a  one\n"},
         {"id": 3, "image_id": 3, "caption": "b two"}],
    )  # fmt: skip
    g = load_captions(path, tmp_path / "img")
    assert g.image_ids == [7, 3]  # image 5 has no caption: left out, counted
    assert g.n_without_captions == 1
    assert g.captions == ["a one", "b one", "b two"]  # whitespace normalised
    assert g.text_to_image.tolist() == [0, 1, 1]
    assert g.captions_of(1) == ["b one", "b two"]
    assert [p.name for p in g.paths] == ["a.png", "b.png"]
    h = g.head(1)
    assert (h.image_ids, h.captions, h.text_to_image.tolist()) == ([7], ["a one"], [0])
    x = g.load_images([1, 0], lambda im: torch.tensor(im.getpixel((0, 0)), dtype=torch.float))
    assert x[:, 0].tolist() == [10.0, 0.0]


def test_karpathy_layout_with_split_and_filepath(tmp_path):
    _images(tmp_path / "img" / "val2014", ["x.jpg"])
    _images(tmp_path / "img", ["y.jpg"])
    data = {"dataset": "coco", "images": [
        {"filepath": "val2014", "filename": "x.jpg", "split": "test", "cocoid": 11,
         "sentences": [{"raw": "x one"}, {"raw": "x two"}]},
        {"filename": "y.jpg", "split": "test", "imgid": 2, "sentences": [{"tokens": ["y", "one"]}]},
        {"filename": "z.jpg", "split": "train", "imgid": 3, "sentences": [{"raw": "z"}]},
    ]}  # fmt: skip
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps(data))
    g = load_captions(path, tmp_path / "img", split="test")
    assert g.image_ids == [11, 2] and g.captions == ["x one", "x two", "y one"]
    assert g.paths[0] == tmp_path / "img" / "val2014" / "x.jpg"
    with pytest.raises(ValueError, match=r"no images of split 'testt'.*\['test', 'train'\]"):
        load_captions(path, tmp_path / "img", split="testt")
    with pytest.raises(ValueError, match="z.jpg"):  # train image missing on disk
        load_captions(path, tmp_path / "img")


@pytest.mark.parametrize(
    "case, match",
    [
        ("empty file", "is empty"),
        ("not json", "not valid JSON"),
        ("no annotations", "holds no captions"),
        ("unknown image id", r"annotation 9 \(image id 42\) refers to an image id that is not"),
        ("missing image", r"image 1 \('.*b\.png'\) is not in"),
        ("wrong layout", "expected COCO captions"),
        ("empty caption", "has no caption text"),
        ("split on coco", "needs a Karpathy split file"),
    ],
)
def test_bad_inputs_name_the_file(tmp_path, case, match):
    _images(tmp_path / "img", ["a.png"])
    images = [{"id": 0, "file_name": "a.png"}]
    anns = [{"id": 0, "image_id": 0, "caption": "a"}]
    split = None
    if case == "empty file":
        path = tmp_path / "captions.json"
        path.write_text("")
    elif case == "not json":
        path = tmp_path / "captions.json"
        path.write_text("{images: ")
    elif case == "no annotations":
        path = _coco(tmp_path, images, [])
    elif case == "unknown image id":
        path = _coco(tmp_path, images, anns + [{"id": 9, "image_id": 42, "caption": "b"}])
    elif case == "missing image":
        path = _coco(tmp_path, images + [{"id": 1, "file_name": "b.png"}],
                     anns + [{"id": 1, "image_id": 1, "caption": "b"}])  # fmt: skip
    elif case == "wrong layout":
        path = tmp_path / "captions.json"
        path.write_text(json.dumps({"images": images, "captions": []}))
    elif case == "empty caption":
        path = _coco(tmp_path, images, [{"id": 0, "image_id": 0, "caption": "  "}])
    else:
        path, split = _coco(tmp_path, images, anns), "test"
    with pytest.raises(ValueError, match=match) as err:
        load_captions(path, tmp_path / "img", split=split)
    assert "captions.json" in str(err.value)


def test_missing_files_and_unreadable_image(tmp_path):
    with pytest.raises(FileNotFoundError, match="captions file not found: '.*nope.json'"):
        load_captions(tmp_path / "nope.json", tmp_path)
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        load_captions(tmp_path / "nope.json", tmp_path / "nowhere")
    images_dir, captions = write_caption_gallery(tmp_path / "g", 3, captions_per_image=2)
    (images_dir / "000001.png").write_bytes(b"not a png")
    g = load_captions(captions, images_dir)
    assert len(g) == 3 and len(g.captions) == 6
    with pytest.raises(ValueError, match=r"cannot read image '.*000001\.png'.*\(image id 1 of"):
        g.load_images([0, 1], lambda im: torch.zeros(3, 2, 2))
    with pytest.raises(ValueError, match="limit must be a positive int"):
        load_captions(captions, images_dir, limit=0)
