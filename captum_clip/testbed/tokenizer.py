"""Word-level tokenizer over the testbed vocabulary (open_clip-compatible call interface).

Ids: ``0`` is padding, ``1..V`` are the words, then ``<sot>`` and ``<eot>``; ``<eot>`` has
the largest id because open_clip's text tower pools the token at ``argmax`` of the ids.
"""

from __future__ import annotations

import re

import torch

from captum_clip.testbed.shapes import (
    BACKGROUND_NAMES,
    CAPTION_TEMPLATES,
    CLASS_NAMES,
    COLOUR_NAMES,
    PROMPT_TEMPLATE,
)

_EXTRA_WORDS = ("an", "the", "image", "picture", "of", "with", "object", "pattern", "background")


def testbed_vocab() -> list[str]:
    """Sorted list of every word the testbed captions and prompts use (plus a few extras)."""
    words: set[str] = set(_EXTRA_WORDS)
    for name in CLASS_NAMES + BACKGROUND_NAMES + COLOUR_NAMES:
        words.update(name.split())
    for template in CAPTION_TEMPLATES + (PROMPT_TEMPLATE,):
        words.update(w for w in re.sub(r"\{\w+\}", " ", template).split())
    return sorted(words)


class TestbedTokenizer:
    """Maps texts to ``(N, context_length)`` LongTensors like open_clip's tokenizers.

    Args:
        vocab: Word list (default: :func:`testbed_vocab`).
        context_length: Tokens per text including ``<sot>`` and ``<eot>``.

    Attributes:
        vocab: The words; word ``vocab[i]`` has id ``i + 1``.
        pad_id, sot_id, eot_id: Special ids (``eot_id`` is the largest id).
        vocab_size: ``eot_id + 1`` (the text tower's embedding table size).
        context_length: Tokens per text.
    """

    __test__ = False  # not a pytest class
    #: Templates that name image regions (``captum_clip.concepts.Namer``): the measured best
    #: ensemble on the testbed (``benchmarks/results/concepts.md``); the classes are patterns.
    concept_templates: tuple[str, ...] = ("a photo of {}", "{} pattern")

    def __init__(self, vocab: list[str] | None = None, context_length: int = 12) -> None:
        vocab = list(testbed_vocab() if vocab is None else vocab)
        if len(set(vocab)) != len(vocab) or not all(isinstance(w, str) and w for w in vocab):
            raise ValueError("vocab must be a list of distinct non-empty strings")
        if isinstance(context_length, bool) or not isinstance(context_length, int):
            raise TypeError(f"context_length must be an int, got {type(context_length).__name__}")
        if context_length < 3:
            raise ValueError(f"context_length must be >= 3, got {context_length}")
        self.vocab = vocab
        self.context_length = context_length
        self.pad_id = 0
        self.sot_id = len(vocab) + 1
        self.eot_id = len(vocab) + 2
        self.vocab_size = self.eot_id + 1
        self._ids = {w: i + 1 for i, w in enumerate(vocab)}
        self._words = {i + 1: w for i, w in enumerate(vocab)}
        self._words.update({self.pad_id: "<pad>", self.sot_id: "<sot>", self.eot_id: "<eot>"})

    def words(self, text: str) -> list[str]:
        """Lower-cases ``text``, drops punctuation and splits it into words."""
        return re.sub(r"[^\w\s]", " ", text.lower()).split()

    def encode(self, text: str) -> list[int]:
        """Ids of one text including ``<sot>``/``<eot>`` (no padding)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        words = self.words(text)
        if not words:
            raise ValueError(
                f"empty text {text!r}; expected words from the vocabulary {self.vocab}"
            )
        unknown = [w for w in words if w not in self._ids]
        if unknown:
            raise ValueError(
                f"unknown word {unknown[0]!r} in {text!r}; the testbed vocabulary is {self.vocab}"
            )
        ids = [self.sot_id] + [self._ids[w] for w in words] + [self.eot_id]
        if len(ids) > self.context_length:
            raise ValueError(
                f"text {text!r} needs {len(ids)} tokens but context_length is {self.context_length}"
            )
        return ids

    def __call__(self, texts: str | list[str], context_length: int | None = None) -> torch.Tensor:
        """Tokenizes a text or a list of texts into ``(N, context_length)`` long ids."""
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, (list, tuple)) or not texts:
            raise ValueError(f"texts must be a str or a non-empty list of str, got {texts!r}")
        length = self.context_length if context_length is None else context_length
        if length != self.context_length:
            raise ValueError(
                f"context_length {length} differs from the model's {self.context_length}"
            )
        out = torch.zeros(len(texts), length, dtype=torch.long)
        for i, text in enumerate(texts):
            ids = self.encode(text)
            out[i, : len(ids)] = torch.tensor(ids)
        return out

    def decode_ids(self, ids: torch.Tensor | list[int]) -> list[str]:
        """Token strings for one id sequence (padding dropped), e.g. ``["<sot>", "red", "<eot>"]``."""
        seq = ids.tolist() if torch.is_tensor(ids) else list(ids)
        if seq and isinstance(seq[0], list):
            raise ValueError("decode_ids takes one sequence; index the batch first")
        bad = [i for i in seq if i not in self._words]
        if bad:
            raise ValueError(f"id {bad[0]} is outside [0, {self.eot_id}]")
        return [self._words[i] for i in seq if i != self.pad_id]

    def decode(self, ids: torch.Tensor | list[int]) -> str:
        """The words of one id sequence joined by spaces (special tokens dropped)."""
        special = {"<sot>", "<eot>"}
        return " ".join(t for t in self.decode_ids(ids) if t not in special)

    def __repr__(self) -> str:
        return (
            f"TestbedTokenizer(vocab_size={self.vocab_size}, context_length={self.context_length})"
        )
