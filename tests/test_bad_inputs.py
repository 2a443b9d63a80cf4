"""Bad input answered clearly: checkpoints, testbed variants, images, targets, masks, ids."""

from __future__ import annotations

import json
import os
import pickle

import open_clip
import pytest
import torch
from conftest import TINY_VIT

from captum_clip.models import ModelLoadError, load_clip
from captum_clip.testbed import zoo


@pytest.fixture(scope="module")
def tiny_name(tmp_path_factory):
    cfg_dir = tmp_path_factory.mktemp("cfg")
    (cfg_dir / "tiny-bad-input-vit.json").write_text(json.dumps(TINY_VIT))
    open_clip.add_model_config(cfg_dir)
    return "tiny-bad-input-vit"


class _RunsCode:
    """Unpickling this would create ``marker`` (builtins.open)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _checkpoints(tmp_path, tiny_name):
    good = open_clip.create_model(tiny_name, pretrained=None).state_dict()
    zipped, legacy, st = tmp_path / "good.pt", tmp_path / "legacy.pt", tmp_path / "good.safetensors"
    torch.save(good, zipped)
    torch.save(good, legacy, _use_new_zipfile_serialization=False)
    from safetensors.torch import save_file

    save_file(good, str(st))
    files = {}
    for src, name in ((zipped, "trunc.pt"), (legacy, "trunc_legacy.pt"), (st, "trunc.safetensors")):
        data = src.read_bytes()
        files[name] = tmp_path / name
        files[name].write_bytes(data[: len(data) // 2])
    files["empty.pt"] = tmp_path / "empty.pt"
    files["empty.pt"].write_bytes(b"")
    rng = torch.Generator().manual_seed(0)
    noise = bytes(torch.randint(0, 256, (4096,), generator=rng, dtype=torch.uint8).tolist())
    for name in ("random.pt", "random.safetensors"):
        files[name] = tmp_path / name
        files[name].write_bytes(noise)
    marker = tmp_path / "code_ran"
    files["code.pt"] = tmp_path / "code.pt"
    torch.save({"visual.proj": _RunsCode(str(marker))}, files["code.pt"])
    files["code_legacy.pkl"] = tmp_path / "code_legacy.pkl"
    files["code_legacy.pkl"].write_bytes(pickle.dumps({"w": _RunsCode(str(marker))}))
    return files, marker


@pytest.mark.parametrize(
    "name, message",
    [
        ("trunc.pt", r"could not be read .*truncated, damaged or not a checkpoint"),
        ("trunc_legacy.pt", r"could not be read .*truncated, damaged or not a checkpoint"),
        ("empty.pt", r"could not be read .*truncated"),
        ("trunc.safetensors", r"not a readable safetensors file .*truncated"),
        ("random.safetensors", r"not a readable safetensors file"),
        ("random.pt", r"not a PyTorch or safetensors checkpoint.*refused, not run"),
        ("code.pt", r"needs to run code to load \(it refers to .*open\).*refused, not run"),
        ("code_legacy.pkl", r"not a PyTorch or safetensors checkpoint.*refused, not run"),
    ],
)
def test_bad_checkpoint_files(tmp_path, tiny_name, name, message):
    files, marker = _checkpoints(tmp_path, tiny_name)
    with pytest.raises(ModelLoadError, match=message) as info:
        load_clip(tiny_name, checkpoint=files[name])
    text = str(info.value)
    assert str(files[name]) in text and "does not match" not in text
    assert "weights_only=False" not in text and "weights_only` set to `False" not in text
    assert not marker.exists()  # nothing in the file was run


def test_bad_checkpoint_in_cli_is_one_error_line(tmp_path, tiny_name, capsys):
    from PIL import Image

    from captum_clip.cli import main as cli_main

    files, marker = _checkpoints(tmp_path, tiny_name)
    Image.new("RGB", (32, 32), (200, 10, 10)).save(tmp_path / "img.png")
    for name in ("code.pt", "trunc.pt"):
        code = cli_main(["explain", str(tmp_path / "img.png"), "--labels", "a,b",
                         "--model", tiny_name, "--checkpoint", str(files[name]),
                         "--out", str(tmp_path / "f.png")])  # fmt: skip
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and err.startswith("captum-clip explain: error:")
        assert "Traceback" not in err and str(files[name]) in err
    assert not marker.exists()


@pytest.mark.parametrize(
    "variant", ["../configs/default", "../testbed/configs/default", "/etc/passwd", "default.json",
                "default/../default"],
)  # fmt: skip
def test_testbed_variant_must_be_a_known_name(variant):
    with pytest.raises(ValueError, match="unknown testbed variant .*known variants: \\['default'"):
        load_clip("testbed", variant=variant)
    with pytest.raises(ValueError, match="unknown testbed variant"):
        zoo.weights_path(variant)
    assert "default" in zoo.list_variants() and os.sep not in "".join(zoo.list_variants())


# ---- item 9: a wrong-size mask blames the mask ---------------------------------------------


@pytest.mark.parametrize("fn", ["pointing_game", "mask_share", "mask_iou"])
@pytest.mark.parametrize(
    "attr_shape, mask_shape",
    [((2, 3, 8, 8), (2, 4, 4)), ((2, 1, 8, 8), (2, 1, 8, 6)), ((2, 8, 8), (3, 8, 8)),
     ((2, 3, 8, 8), (2, 3, 8, 8))],
)  # fmt: skip
def test_wrong_mask_size_blames_the_mask(fn, attr_shape, mask_shape):
    from captum_clip import metrics

    attributions = torch.rand(attr_shape)
    masks = torch.ones(mask_shape, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"^masks must have shape \(2, 8, 8\) or \(2, 1, 8, 8\)"):
        getattr(metrics, fn)(attributions, masks)
    good = torch.zeros(2, 8, 8, dtype=torch.bool)
    good[:, 2:5, 2:5] = True  # the same attributions with a fitting mask work
    assert getattr(metrics, fn)(attributions, good).shape == (2,)
    with pytest.raises(ValueError, match=r"^attributions must have shape"):
        getattr(metrics, fn)(torch.rand(2, 8), good)


# ---- item 6: unreadable images are one error line naming the file --------------------------


def _bad_images(tmp_path):
    from PIL import Image

    folder = tmp_path / "imgs" / "dots"
    folder.mkdir(parents=True)
    Image.new("RGB", (64, 64), (10, 200, 10)).save(folder / "a_good.png")
    (folder / "b_text.png").write_text("this is not an image")
    data = (folder / "a_good.png").read_bytes()
    trunc = tmp_path / "trunc.png"
    trunc.write_bytes(data[: len(data) // 2])
    return folder, folder / "b_text.png", trunc


def test_read_image(tmp_path):
    from PIL import Image

    from captum_clip._images import read_image

    folder, text, trunc = _bad_images(tmp_path)
    with pytest.raises(ValueError, match=r"cannot read image '.*b_text.png': not an image format"):
        read_image(text)
    with pytest.raises(ValueError, match=r"cannot read image '.*trunc.png': .*truncated"):
        read_image(trunc)
    with pytest.raises(FileNotFoundError, match="image file not found"):
        read_image(tmp_path / "nope.png")
    Image.new("RGBA", (4, 4), (1, 2, 3, 0)).save(tmp_path / "alpha.png")
    assert read_image(tmp_path / "alpha.png", None).mode == "RGBA"
    rgb = read_image(tmp_path / "alpha.png")
    assert rgb.mode == "RGB" and rgb.getpixel((0, 0)) == (1, 2, 3)


@pytest.mark.parametrize(
    "argv",
    [
        ["explain", "{bad}", "--labels", "dots,checks", "--out", "{tmp}/f.png"],
        ["interactions", "{bad}", "a photo of dots", "--out", "{tmp}/f.png", "--n-steps", "2"],
        ["faithfulness", "folder", "{folder}", "--model", "testbed", "--classes", "dots",
         "--methods", "Saliency", "--out", "{tmp}/r.md"],
        ["diagnose", "folder", "{folder}", "--model", "testbed", "--masks", "{folder}"],
    ],
)  # fmt: skip
def test_cli_unreadable_image_is_one_error_line(tmp_path, argv, capsys):
    from captum_clip.cli import main as cli_main

    folder, text, trunc = _bad_images(tmp_path)
    root = folder.parent
    for bad in (text, trunc) if argv[0] in ("explain", "interactions") else (text,):
        args = [a.format(bad=bad, tmp=tmp_path, folder=root) for a in argv]
        code = cli_main(args)
        err = capsys.readouterr().err
        assert code == 2, err
        assert err.count("\n") == 1 and ": error: cannot read image" in err, err
        assert str(bad) in err and "Traceback" not in err
