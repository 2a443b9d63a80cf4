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

    from captum_clip.storage import read_image

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
        ["grounding", "folder", "{tmp}/pairs.csv", "--model", "testbed", "--out", "{tmp}/g",
         "--n-steps", "2"],
    ],
)  # fmt: skip
def test_cli_unreadable_image_is_one_error_line(tmp_path, argv, capsys):
    from captum_clip.cli import main as cli_main

    folder, text, trunc = _bad_images(tmp_path)
    root = folder.parent
    (tmp_path / "pairs.csv").write_text(
        "image,caption,mask,object\nimgs/dots/b_text.png,a photo of dots,imgs/dots/a_good.png,dots\n"
    )
    for bad in (text, trunc) if argv[0] in ("explain", "interactions") else (text,):
        args = [a.format(bad=bad, tmp=tmp_path, folder=root) for a in argv]
        code = cli_main(args)
        err = capsys.readouterr().err
        assert code == 2, err
        assert err.count("\n") == 1 and ": error: cannot read image" in err, err
        assert str(bad) in err and "Traceback" not in err


# ---- item 4: float64 / float16 images with a float32 model: cast, results unchanged --------

CLASSES = ["a red square", "a blue circle", "a green line"]


@pytest.fixture(scope="module")
def clf():
    from conftest import make_tiny_vit, tiny_tokenizer

    from captum_clip.models import ClipClassifier

    return ClipClassifier(make_tiny_vit(), tiny_tokenizer(), CLASSES)


def _methods(clf):
    from conftest import tiny_tokenizer

    from captum_clip.attr import CCI, GradECLIP, GradientRollout, MaskCLIP, vit_gradcam
    from captum_clip.attr.interactions import IntegratedInteractions
    from captum_clip.models import ClipSimilarity

    sim = ClipSimilarity(clf.model, clf.tokenizer, ["a photo"])
    ii = IntegratedInteractions(clf.model, tiny_tokenizer())
    return {
        "ClipClassifier": lambda x: clf(x),
        "ClipSimilarity": lambda x: sim(x),
        "CCI attention": lambda x: CCI(clf, n_clusters=2).attribute(x, target=1),
        "CCI pixel": lambda x: CCI(clf, n_clusters=2, mask_mode="pixel").attribute(x, target=1),
        "vit_gradcam": lambda x: vit_gradcam(clf, x, target=1),
        "MaskCLIP": lambda x: MaskCLIP(clf).attribute(x, target=1),
        "GradientRollout": lambda x: GradientRollout(clf).attribute(x, target=1),
        "GradECLIP": lambda x: GradECLIP(clf).attribute(x, target=1),
        "interactions": lambda x: ii.explain(x, ["a red square"] * len(x), n_steps=2).attributions,
    }


@pytest.mark.parametrize(
    "method",
    ["ClipClassifier", "ClipSimilarity", "CCI attention", "CCI pixel", "vit_gradcam", "MaskCLIP",
     "GradientRollout", "GradECLIP", "interactions"],
)  # fmt: skip
def test_other_float_dtypes_are_cast_to_the_models(clf, method):
    fn = _methods(clf)[method]
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    ref = fn(x)
    for dtype in (torch.float64, torch.float16):
        xd = x.to(dtype)
        got = fn(xd)
        # the same numbers as the float32 tensor the cast makes (float64 -> float32 is exact
        # for these values; float16 compares with its own exact float32 image)
        want = ref if dtype == torch.float64 else fn(xd.float())
        image_shaped = got.shape == x.shape
        assert got.dtype == (dtype if image_shaped else want.dtype)
        torch.testing.assert_close(got, want.to(got.dtype), rtol=0, atol=0)


def test_gradients_flow_to_float64_images(clf):
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64, requires_grad=True)
    clf(x)[0, 1].backward()
    x32 = x.detach().float().requires_grad_(True)
    clf(x32)[0, 1].backward()
    assert x.grad.dtype == torch.float64
    torch.testing.assert_close(x.grad.float(), x32.grad)


def test_cast_overflow_and_non_float_images(clf):
    with pytest.raises(ValueError, match="outside the range of the model's dtype torch.float32"):
        clf(torch.full((1, 3, 32, 32), 1e300, dtype=torch.float64))
    with pytest.raises(TypeError, match="must be a floating tensor"):
        clf(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


def test_float64_model_gets_float64_images():
    from conftest import make_tiny_vit, tiny_tokenizer

    from captum_clip.models import ClipClassifier

    m32 = make_tiny_vit()
    c32 = ClipClassifier(m32, tiny_tokenizer(), CLASSES)
    c64 = ClipClassifier(make_tiny_vit().double(), tiny_tokenizer(), CLASSES)
    assert c64.vision.dtype == torch.float64 and c32.vision.dtype == torch.float32
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(c64(x), c32(x), rtol=1e-4, atol=1e-4)


# ---- item 7: GradCAM targets answered by our checks, also under python -O -----------------

GRADCAM_TARGETS = """
import torch
from conftest import make_tiny_vit, tiny_tokenizer
from captum_clip.attr import vit_gradcam
from captum_clip.models import ClipClassifier

clf = ClipClassifier(make_tiny_vit(), tiny_tokenizer(), ["a", "b", "c"])
x = torch.randn(2, 3, 32, 32)
plain = lambda images: clf(images)  # a callable without known outputs
cases = [
    (dict(forward_func=clf, target=-1), "target must be in [0, 2] for 3 outputs, got [-1]"),
    (dict(forward_func=clf, target=3), "target must be in [0, 2] for 3 outputs, got [3]"),
    (dict(forward_func=clf, target=[0, 7]), "target must be in [0, 2] for 3 outputs, got [0, 7]"),
    (dict(forward_func=clf, target=None), "target is required"),
    (dict(forward_func=plain, target=-1), "target must be >= 0 (an output index), got [-1]"),
    (dict(forward_func=plain, target=3), "target must be in [0, 2] for 3 outputs, got [3]"),
    (dict(forward_func=plain, target=None), "target is required"),
    (dict(forward_func=lambda im: clf(im)[:1], target=0), "must return a (B,) or (B, n_outputs)"),
]
for kw, message in cases:
    ff = kw.pop("forward_func")
    try:
        vit_gradcam(ff, x, vision_model=clf.model.visual, **kw)
    except ValueError as err:
        assert message in str(err), (message, str(err))
    else:
        raise SystemExit(f"no error for {kw}")
one = vit_gradcam(lambda im: clf(im)[:, 1], x, vision_model=clf.model.visual)
two = vit_gradcam(clf, x, target=1)
assert torch.allclose(one, two), "a (B,) forward_func equals its column"
print("ok", __debug__)
"""


@pytest.mark.parametrize("optimize", [False, True])
def test_gradcam_targets_checked_without_asserts(tmp_path, optimize):
    import subprocess
    import sys
    from pathlib import Path

    tests_dir = Path(__file__).resolve().parent
    script = tmp_path / "targets.py"
    script.write_text(GRADCAM_TARGETS)
    if not optimize:  # in this process (fast)
        exec(compile(GRADCAM_TARGETS, str(script), "exec"), {"__name__": "gradcam_targets"})
        return
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tests_dir.parent), str(tests_dir)]),
           "OMP_NUM_THREADS": "1"}  # fmt: skip
    proc = subprocess.run([sys.executable, "-O", str(script)], capture_output=True, text=True,
                          env=env, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("ok False")  # really ran with asserts stripped


# ---- item 8: token ids of IntegratedInteractions -------------------------------------------


def test_interaction_text_baseline_and_ids(clf):
    from captum_clip.attr.interactions import IntegratedInteractions

    ii = IntegratedInteractions(clf.model, clf.tokenizer)
    x = torch.randn(1, 3, 32, 32)
    ids = clf.tokenizer(["a red square"])
    with pytest.raises(
        TypeError, match="text_baseline must hold integer token ids .*torch.float32"
    ):
        ii.explain(x, ["a red square"], n_steps=2, text_baseline=ids.float())
    with pytest.raises(TypeError, match="text_baseline must hold integer token ids"):
        ii.explain(x, ["a red square"], n_steps=2, text_baseline=lambda t: t.double())
    bad = ids.clone()
    bad[0, 2] = 49408
    with pytest.raises(ValueError, match=r"text_baseline must be in \[0, 49407\] .*got \[49408\]"):
        ii.explain(x, ["a red square"], n_steps=2, text_baseline=bad)
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 49407\] .*got \[-1\]"):
        ii.explain(x, torch.where(ids == 0, -1, ids), n_steps=2)
    # integer baselines inside the vocabulary still work, int32 included
    ok = ii.explain(x, ["a red square"], n_steps=2, text_baseline=ids.int())
    assert torch.isfinite(ok.attributions).all()
