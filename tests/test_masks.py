"""Mask providers: ground truth pass-through, SAM with box prompts, GroundedSAM."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch

from captum_clip.masks import (
    GroundedSamMasker,
    GroundTruthMasks,
    MaskProvider,
    SamMasker,
    boxes_from_attributions,
    preprocess_mask,
    to_unit_images,
)
from captum_clip.metrics import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from captum_clip.models import CheckpointNotFoundError

sa = pytest.importorskip("segment_anything", reason="the 'sam' extra is not installed")


def tiny_sam(checkpoint=None, img_size=64):
    """A SAM with the real architecture classes but a tiny image encoder (64 px, 1 block)."""
    from segment_anything.modeling import (
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )

    dim, patch = 32, 16
    grid = img_size // patch
    sam = Sam(
        image_encoder=ImageEncoderViT(
            img_size=img_size,
            patch_size=patch,
            embed_dim=32,
            depth=1,
            num_heads=2,
            out_chans=dim,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            use_rel_pos=True,
            window_size=0,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=dim,
            image_embedding_size=(grid, grid),
            input_image_size=(img_size, img_size),
            mask_in_chans=4,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=1, embedding_dim=dim, mlp_dim=32, num_heads=2),
            transformer_dim=dim,
            iou_head_depth=1,
            iou_head_hidden_dim=16,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    return sam.eval()


def normalise(x01):
    m = torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    s = torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1)
    return (x01 - m) / s


def photo(name="chelsea", size=(48, 72)):
    import skimage.data
    import torch.nn.functional as F

    img = (
        torch.from_numpy(getattr(skimage.data, name)().copy()).permute(2, 0, 1)[None].float() / 255
    )
    return F.interpolate(img, size=size, mode="area")


def reference_mask(sam, x01, box, multimask=True):
    """Straight SamPredictor call on the uint8 image, best-scored mask."""
    predictor = sa.SamPredictor(sam)
    img = (x01[0] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    predictor.set_image(img)
    masks, scores, _ = predictor.predict(
        box=np.asarray(box, dtype=float), multimask_output=multimask
    )
    return torch.from_numpy(masks[int(np.argmax(scores))])


def test_ground_truth_masks_pass_through_and_validation():
    m = torch.zeros(3, 8, 8, dtype=torch.bool)
    m[:, 2:5, 2:5] = True
    gt = GroundTruthMasks(m.float())
    assert isinstance(gt, MaskProvider)
    out = gt(torch.zeros(3, 3, 8, 8), ["a", "b", "c"])
    assert out.dtype == torch.bool and torch.equal(out, m)
    assert torch.equal(gt[1:](torch.zeros(2, 3, 8, 8)), m[1:])
    assert torch.equal(gt[0](torch.zeros(1, 3, 8, 8)), m[:1])
    with pytest.raises(ValueError, match="need"):
        gt(torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match="need"):
        gt(torch.zeros(3, 3, 16, 16))
    with pytest.raises(ValueError, match="only 0 and 1"):
        GroundTruthMasks(m.float() * 0.5)
    with pytest.raises(ValueError, match="shape"):
        GroundTruthMasks(torch.zeros(8, 8))
    with pytest.raises(TypeError):
        GroundTruthMasks(np.zeros((1, 8, 8)))
    with pytest.raises(ValueError, match="one name per image"):
        gt(torch.zeros(3, 3, 8, 8), ["a"])
    with pytest.raises(ValueError, match="NaN"):
        gt(torch.full((3, 3, 8, 8), float("nan")))


def test_boxes_from_attributions_hand_built():
    a = torch.zeros(2, 1, 10, 12)
    a[0, 0, 2:4, 3:7] = 1.0  # top region, 2x4
    a[0, 0, 8, 0] = 1.0  # a smaller disconnected part at the same maximum
    a[0, 0, 5:9, 5:9] = 0.5  # second cluster
    a[1, 0] = -1.0
    a[1, 0, 9, 11] = 2.0
    boxes = boxes_from_attributions(a)
    assert boxes.tolist() == [[3, 2, 7, 4], [11, 9, 12, 10]]
    # a constant map: the whole image
    assert boxes_from_attributions(torch.ones(1, 5, 6)).tolist() == [[0, 0, 6, 5]]
    with pytest.raises(ValueError, match="NaN"):
        boxes_from_attributions(torch.full((1, 4, 4), float("nan")))


def test_sam_masker_matches_sam_predictor_with_detector_boxes():
    torch.manual_seed(0)
    sam = tiny_sam()
    x01 = torch.cat([photo("chelsea"), photo("astronaut")])
    x = normalise(x01)
    box0, boxes1 = [10, 5, 40, 30], [[2, 2, 20, 20], [30, 10, 70, 45]]
    calls = []

    def detector(images01, names):
        calls.append((images01.clone(), list(names)))
        return [np.array(box0), torch.tensor(boxes1)]

    masker = SamMasker(model=sam, detector=detector)
    out = masker(x, ["cat", "person"])
    assert out.shape == (2, 48, 72) and out.dtype == torch.bool
    torch.testing.assert_close(calls[0][0], x01, atol=1e-5, rtol=0)  # detector sees [0, 1]
    assert calls[0][1] == ["cat", "person"]
    assert torch.equal(out[0], reference_mask(sam, x01[:1], box0))
    union = reference_mask(sam, x01[1:], boxes1[0]) | reference_mask(sam, x01[1:], boxes1[1])
    assert torch.equal(out[1], union)
    single = SamMasker(model=sam, detector=detector, multimask_output=False)(x, ["cat", "dog"])
    assert torch.equal(single[0], reference_mask(sam, x01[:1], box0, multimask=False))
    # no box -> empty mask; images in [0, 1] with mean=None give the same masks
    empty = SamMasker(model=sam, detector=lambda im, n: [None, box0])
    got = empty(x, ["a", "b"])
    assert not got[0].any() and torch.equal(got[1], reference_mask(sam, x01[1:], box0))
    raw = SamMasker(model=sam, detector=detector, mean=None, std=None)(x01, ["a", "b"])
    assert torch.equal(raw, out)
    assert sam.training is False


def test_sam_masker_checkpoint_round_trip_and_errors(tmp_path):
    torch.manual_seed(1)
    sam = tiny_sam()
    path = tmp_path / "tiny_sam.pth"
    torch.save(sam.state_dict(), path)
    x = normalise(photo("coffee", (40, 40)))
    det = lambda im, n: [[4, 4, 30, 36]]  # noqa: E731
    from_file = SamMasker(checkpoint=path, model_type=tiny_sam, detector=det)
    from_model = SamMasker(model=sam, detector=det)
    assert torch.equal(from_file(x, ["cup"]), from_model(x, ["cup"]))
    for p, q in zip(from_file.sam.parameters(), sam.parameters()):
        assert torch.equal(p, q)
    with pytest.raises(CheckpointNotFoundError):
        SamMasker(checkpoint=tmp_path / "missing.pth", model_type=tiny_sam, detector=det)
    with pytest.raises(ValueError, match="not found"):
        SamMasker(checkpoint=tmp_path / "missing.pth", detector=det)
    with pytest.raises(ValueError, match="checkpoint="):
        SamMasker(detector=det)
    with pytest.raises(ValueError, match="box prompts"):
        SamMasker(model=sam)
    with pytest.raises(ValueError, match="model_type"):
        SamMasker(checkpoint=path, model_type="vit_x", detector=det)
    with pytest.raises(ValueError, match="does not match"):
        SamMasker(checkpoint=path, model_type=partial(tiny_sam, img_size=32), detector=det)
    with pytest.raises(ValueError, match="x1 > x0"):
        SamMasker(model=sam, detector=lambda im, n: [[10, 10, 5, 20]])(x, ["cup"])
    with pytest.raises(ValueError, match="1 images"):
        SamMasker(model=sam, detector=lambda im, n: [None, None])(x, ["cup"])


def test_sam_masker_cci_box_fallback(tiny_vit, tokenizer):
    pytest.importorskip("captum_clip.attr.cci")
    from captum_clip.attr.cci import CCI
    from captum_clip.models import ClipClassifier

    clf = ClipClassifier(tiny_vit, tokenizer, ["cat", "coffee", "rocket"])
    x = normalise(torch.cat([photo("chelsea", (32, 32)), photo("coffee", (32, 32))]))
    torch.manual_seed(0)
    sam = tiny_sam()
    masker = SamMasker(model=sam, classifier=clf, cci_kwargs={"n_clusters": 3})
    boxes = masker.boxes(x, ["rocket", "cat"])
    paper = CCI(clf, n_clusters=3, estimator="occlusion")  # what CCI.default_for(clf, 3) is
    want = boxes_from_attributions(paper.attribute(x, target=[2, 0]))
    assert [b.tolist() for b in boxes] == [[w.tolist()] for w in want]
    pred = clf(x).argmax(1)
    want_pred = boxes_from_attributions(paper.attribute(x, target=pred))
    assert [b[0].tolist() for b in masker.boxes(x, None)] == want_pred.tolist()
    # the detector comes first; CCI fills in where it finds nothing
    both = SamMasker(
        model=sam,
        classifier=clf,
        detector=lambda im, n: [[1, 1, 9, 9], None],
        cci_kwargs={"n_clusters": 3},
    )
    got = both.boxes(x, ["rocket", "cat"])
    assert got[0].tolist() == [[1, 1, 9, 9]] and got[1].tolist() == [want[1].tolist()]
    masks = masker(x, ["rocket", "cat"])
    assert torch.equal(masks, masker.segment(x, boxes))
    with pytest.raises(ValueError, match="not classes"):
        masker.boxes(x, ["cat", "zebra"])


def test_grounded_sam_with_injected_detector():
    torch.manual_seed(2)
    sam = tiny_sam()
    x = normalise(photo("astronaut", (40, 40)))
    seen = []

    def detector(images01, names):
        seen.append(list(names))
        return [[5, 5, 35, 30]]

    g = GroundedSamMasker(detector, model=sam)
    out = g(x, ["person"])
    assert seen == [["person"]]
    assert torch.equal(
        out[0],
        reference_mask(
            sam, to_unit_images(x, OPENAI_DATASET_MEAN, OPENAI_DATASET_STD), [5, 5, 35, 30]
        ),
    )
    with pytest.raises(ValueError, match="class_names"):
        g(x, None)
    with pytest.raises(CheckpointNotFoundError):
        GroundedSamMasker("/nonexistent/grounding-dino", model=sam)


def _tiny_grounding_dino(folder):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GroundingDinoConfig(
        backbone_config=dict(
            model_type="swin",
            embed_dim=16,
            depths=[1, 1, 1, 1],
            num_heads=[1, 1, 1, 1],
            window_size=7,
            out_indices=[2, 3, 4],
        ),
        text_config=dict(
            model_type="bert",
            vocab_size=40,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
        ),
        d_model=32,
        encoder_layers=1,
        decoder_layers=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        num_queries=10,
        encoder_n_points=2,
        decoder_n_points=2,
        max_text_len=32,
        fusion_dropout=0.0,
    )
    torch.manual_seed(0)
    model = transformers.GroundingDinoForObjectDetection(cfg).eval()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "a", "cat", "person"]
    vocab += [f"w{i}" for i in range(40 - len(vocab))]
    (folder / "vocab.txt").write_text("\n".join(vocab))
    tok = transformers.BertTokenizerFast(str(folder / "vocab.txt"))
    ip = transformers.GroundingDinoImageProcessor(size={"shortest_edge": 64, "longest_edge": 96})
    proc = transformers.GroundingDinoProcessor(image_processor=ip, tokenizer=tok)
    model.save_pretrained(folder)
    proc.save_pretrained(folder)
    return model, proc


def test_grounded_sam_with_a_tiny_local_grounding_dino(tmp_path):
    from PIL import Image

    model, proc = _tiny_grounding_dino(tmp_path)
    torch.manual_seed(3)
    sam = tiny_sam()
    x01 = photo("chelsea", (48, 64))
    g = GroundedSamMasker(
        tmp_path, model=sam, box_threshold=0.0, text_threshold=0.0, max_boxes=2, mean=None, std=None
    )
    boxes = g.boxes(x01, ["cat"])
    # independent: the processor + model called directly
    img = Image.fromarray((x01[0] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy())
    inputs = proc(images=img, text="cat.", return_tensors="pt")
    with torch.no_grad():
        res = proc.post_process_grounded_object_detection(
            model(**inputs),
            inputs["input_ids"],
            threshold=0.0,
            text_threshold=0.0,
            target_sizes=[(48, 64)],
        )[0]
    order = res["scores"].argsort(descending=True)[:2]
    want = res["boxes"][order].double().numpy()
    want[:, [0, 2]] = want[:, [0, 2]].clip(0, 64)
    want[:, [1, 3]] = want[:, [1, 3]].clip(0, 48)
    np.testing.assert_allclose(boxes[0], want, atol=1e-4)
    out = g(x01, ["cat"])
    assert out.shape == (1, 48, 64) and torch.equal(out, g.segment(x01, boxes))


def test_preprocess_mask_follows_image_geometry():
    from PIL import Image

    from captum_clip.testbed.zoo import TestbedPreprocess

    arr = np.zeros((40, 80), dtype=bool)
    arr[10:30, 20:40] = True
    import torchvision.transforms as T

    pre = T.Compose(
        [
            T.Resize(20),
            T.CenterCrop(20),
            T.ToTensor(),
            T.Normalize(OPENAI_DATASET_MEAN, OPENAI_DATASET_STD),
        ]
    )
    m = preprocess_mask(Image.fromarray(arr.astype(np.uint8) * 255), pre)
    # resize by 1/2 -> (20, 40), centre crop columns 10..30: object at rows 5..15, cols 0..10
    want = torch.zeros(20, 20, dtype=torch.bool)
    want[5:15, 0:10] = True
    assert torch.equal(m, want)
    sq = np.zeros((64, 64), dtype=np.uint8)
    sq[8:40, 16:48] = 1
    m2 = preprocess_mask(sq, TestbedPreprocess(32))
    want2 = torch.zeros(32, 32, dtype=torch.bool)
    want2[4:20, 8:24] = True
    assert torch.equal(m2, want2)


@pytest.mark.slow
def test_sam_vit_b_random_init_on_a_photo():
    """The real ViT-B SAM architecture (random weights; ~1-2 min on 2 CPU cores)."""
    torch.manual_seed(0)
    sam = sa.sam_model_registry["vit_b"](checkpoint=None)
    x01 = photo("chelsea", (75, 113))
    box = [20, 10, 90, 70]
    out = SamMasker(model=sam, detector=lambda im, n: [box], mean=None, std=None)(x01, ["cat"])
    assert out.shape == (1, 75, 113)
    assert torch.equal(out[0], reference_mask(sam, x01, box))
