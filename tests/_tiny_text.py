"""Offline builders of tiny models with the text towers of issue 20 (reused by benchmarks).

Everything is random-initialised and built from local configs: nothing downloads.
"""

from __future__ import annotations

import os
import tempfile

import open_clip
import torch

WORDS = (
    "a photo of the cat dog red blue green square circle triangle on in with small big"
).split()

COCA_CFG = dict(
    embed_dim=32,
    vision_cfg=dict(
        image_size=32, patch_size=8, width=64, layers=2, head_width=16, mlp_ratio=2.0,
        attentional_pool=True, attn_pooler_heads=4, attn_pooler_queries=8,
        output_tokens=True,
    ),
    text_cfg=dict(
        context_length=15, vocab_size=49408, width=32, heads=2, layers=2, embed_cls=True,
        output_tokens=True,
    ),
    multimodal_cfg=dict(context_length=15, vocab_size=49408, width=32, heads=2, layers=1),
)  # fmt: skip

TINY_VISION = dict(image_size=32, patch_size=8, width=64, layers=2, head_width=16, mlp_ratio=2.0)


def make_tiny_coca(seed: int = 0) -> torch.nn.Module:
    """open_clip ``CoCa`` (appended text class token, attention-pooled vision); its
    tokenizer is ``open_clip.tokenizer.SimpleTokenizer(context_length=15)``."""
    torch.manual_seed(seed)
    return open_clip.CoCa(**COCA_CFG).eval()


def coca_tokenizer() -> open_clip.tokenizer.SimpleTokenizer:
    return open_clip.tokenizer.SimpleTokenizer(context_length=15)


def save_tiny_roberta_config(folder: str) -> str:
    """A tiny ``RobertaConfig`` saved in ``folder`` (what ``hf_model_name`` points at)."""
    from transformers import RobertaConfig

    RobertaConfig(
        vocab_size=len(WORDS) + 4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=24, pad_token_id=1, bos_token_id=0,
        eos_token_id=2, type_vocab_size=1,
    ).save_pretrained(folder)  # fmt: skip
    return folder


def make_tiny_hf_text_clip(
    pooler: str = "mean_pooler", seed: int = 0, folder: str | None = None
) -> torch.nn.Module:
    """open_clip ``CustomTextCLIP`` whose text tower is an ``HFTextEncoder`` over a tiny
    random RoBERTa (``hf_model_pretrained=False``, config from a local folder). The ids
    are those of :func:`make_word_tokenizer` (``<s>``=0, ``<pad>``=1, ``</s>``=2)."""
    folder = folder or tempfile.mkdtemp(prefix="tiny_roberta_")
    if not os.path.isfile(os.path.join(folder, "config.json")):
        save_tiny_roberta_config(folder)
    torch.manual_seed(seed)
    text_cfg = dict(
        hf_model_name=folder, hf_model_pretrained=False, hf_pooler_type=pooler,
        hf_proj_type="linear", context_length=16,
    )  # fmt: skip
    return open_clip.model.CustomTextCLIP(
        embed_dim=32, vision_cfg=TINY_VISION, text_cfg=text_cfg
    ).eval()


def make_tiny_mt5_text_clip(seed: int = 0) -> torch.nn.Module:
    """open_clip ``CustomTextCLIP`` over a tiny random mT5 encoder (runs as a whole: text
    hidden-state indices 0 and ``n_blocks`` only); ids: pad 0, eos 1."""
    from transformers import MT5Config

    folder = tempfile.mkdtemp(prefix="tiny_mt5_")
    MT5Config(
        vocab_size=30, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    ).save_pretrained(folder)  # fmt: skip
    torch.manual_seed(seed)
    text_cfg = dict(
        hf_model_name=folder, hf_model_pretrained=False, hf_pooler_type="mean_pooler",
        hf_proj_type="linear",
    )  # fmt: skip
    return open_clip.model.CustomTextCLIP(
        embed_dim=32, vision_cfg=TINY_VISION, text_cfg=text_cfg
    ).eval()


def siglip_configs(siglip2: bool = False) -> object:
    """A tiny ``SiglipConfig`` (or ``Siglip2Config``): 32 px images, 8 px patches, 2 layers."""
    import transformers

    text = dict(
        vocab_size=len(WORDS) + 4, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=16, projection_size=32,
        pad_token_id=1, bos_token_id=0, eos_token_id=2,
    )  # fmt: skip
    vision = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        patch_size=8,
    )  # fmt: skip
    if siglip2:
        return transformers.Siglip2Config(
            text_config=text, vision_config=dict(vision, num_patches=16)
        )
    return transformers.SiglipConfig(text_config=text, vision_config=dict(vision, image_size=32))


def make_tiny_siglip(seed: int = 0, siglip2: bool = False) -> torch.nn.Module:
    """A tiny random ``transformers`` ``SiglipModel`` (or ``Siglip2Model``) with a nonzero
    logit bias."""
    import transformers

    torch.manual_seed(seed)
    cls = transformers.Siglip2Model if siglip2 else transformers.SiglipModel
    model = cls(siglip_configs(siglip2)).eval()
    with torch.no_grad():
        model.logit_scale.fill_(2.0)
        model.logit_bias.fill_(-1.5)
    return model


def make_word_tokenizer(context_length: int = 16):
    """A ``PreTrainedTokenizerFast`` over :data:`WORDS`, built offline with ``tokenizers``
    (WordLevel, whitespace split, ``<s> ... </s>``, padded to ``context_length``)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    vocab.update({w: i + 4 for i, w in enumerate(WORDS)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        unk_token="<unk>", model_max_length=context_length,
    )  # fmt: skip


def save_word_tokenizer(folder: str, context_length: int = 16) -> str:
    """:func:`make_word_tokenizer` saved with ``save_pretrained`` in ``folder``."""
    make_word_tokenizer(context_length).save_pretrained(folder)
    return folder


class WordIds:
    """``texts -> LongTensor (N, context_length)`` with :func:`make_word_tokenizer`
    (``max_length`` padding, as SigLIP is run)."""

    def __init__(self, context_length: int = 16) -> None:
        self.tokenizer = make_word_tokenizer(context_length)
        self.context_length = context_length

    def __call__(self, texts):
        texts = [texts] if isinstance(texts, str) else list(texts)
        out = self.tokenizer(
            texts, padding="max_length", max_length=self.context_length, return_tensors="pt"
        )
        return out["input_ids"]
