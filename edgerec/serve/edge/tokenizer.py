"""BERT uncased WordPiece in pure Python: the tokenizer the edge runtime ships (no torch, no Rust).

Same algorithm as the teacher's (Hugging Face BertTokenizer, uncased): clean control characters,
put spaces around CJK characters, lower-case, strip accents (NFD, drop Mn), split on white space
and punctuation, then greedy longest-match-first WordPiece with '##' continuations; a word with
no segmentation (or longer than 100 characters) becomes [UNK]. A test checks it produces the
teacher tokenizer's ids on every task sentence.

With a PRUNED vocabulary the same greedy match simply finds fewer pieces: a dropped word falls
back to its sub-pieces, and to [UNK] only when no segmentation exists.
"""

from __future__ import annotations

import re
import unicodedata

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def _is_punct(ch: str) -> bool:
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(cp: int) -> bool:
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF or 0x2A700 <= cp <= 0x2B73F
            or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF or 0xF900 <= cp <= 0xFAFF
            or 0x2F800 <= cp <= 0x2FA1F)


# ASCII fast path: delete control characters (HF's _clean_text), turn \t \n \r into spaces; what is
# left is letters, digits, spaces and punctuation (every other printable ASCII character is
# punctuation to BERT), and NFD accent stripping is a no-op.
_ASCII_CLEAN = {cp: None for cp in [*range(32), 127] if chr(cp) not in "\t\n\r"} | {ord(c): " " for c in "\t\n\r"}
_ASCII_WORD_OR_PUNCT = re.compile(r"[a-z0-9]+|[^a-z0-9 ]")


def basic_tokens(text: str) -> list[str]:
    """Clean, lower-case, strip accents, split on white space and punctuation (BERT's BasicTokenizer)."""
    if text.isascii():  # most sentences: one translate and one regex instead of a loop per character
        return _ASCII_WORD_OR_PUNCT.findall(text.translate(_ASCII_CLEAN).lower())
    return _general_tokens(text)


def _general_tokens(text: str) -> list[str]:
    out = []
    for ch in text:
        cp = ord(ch)
        if cp == 0 or cp == 0xFFFD or (unicodedata.category(ch).startswith("C") and ch not in "\t\n\r"):
            continue
        if _is_cjk(cp):
            out.append(f" {ch} ")
        elif ch in " \t\n\r" or unicodedata.category(ch) == "Zs":
            out.append(" ")
        else:
            out.append(ch)
    words = []
    for w in "".join(out).lower().split():
        w = "".join(c for c in unicodedata.normalize("NFD", w) if unicodedata.category(c) != "Mn")
        cur = ""
        for ch in w:
            if _is_punct(ch):
                if cur:
                    words.append(cur)
                    cur = ""
                words.append(ch)
            else:
                cur += ch
        if cur:
            words.append(cur)
    return words


class WordPiece:
    def __init__(self, vocab: list[str], max_word_chars: int = 100):
        self.vocab = list(vocab)
        self.index = {t: i for i, t in enumerate(self.vocab)}
        missing = [s for s in SPECIALS if s not in self.index]
        if missing:
            raise ValueError(f"vocabulary lacks the special tokens {missing}")
        self.unk, self.cls, self.sep, self.pad = (self.index[s] for s in ("[UNK]", "[CLS]", "[SEP]", "[PAD]"))
        self.max_word_chars = max_word_chars
        self._memo: dict[str, list[int]] = {}  # words repeat: segment each once (bounded below)

    @classmethod
    def from_file(cls, path) -> "WordPiece":
        with open(path, encoding="utf-8") as f:
            return cls([line.rstrip("\n") for line in f])

    def word_ids(self, word: str) -> list[int]:
        hit = self._memo.get(word)
        if hit is not None:
            return hit
        ids = self._segment(word)
        if len(self._memo) < 200_000:
            self._memo[word] = ids
        return ids

    def _segment(self, word: str) -> list[int]:
        if len(word) > self.max_word_chars:
            return [self.unk]
        ids, start = [], 0
        while start < len(word):
            end, found = len(word), None
            while start < end:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.index:
                    found = self.index[piece]
                    break
                end -= 1
            if found is None:
                return [self.unk]
            ids.append(found)
            start = end
        return ids

    def encode(self, text: str, max_len: int = 64) -> list[int]:
        """[CLS] pieces [SEP], truncated to max_len."""
        ids = [self.cls]
        for w in basic_tokens(text):
            ids.extend(self.word_ids(w))
            if len(ids) >= max_len - 1:
                break
        return ids[: max_len - 1] + [self.sep]

    def batch(self, texts: list[str], max_len: int = 64):
        """(ids, mask) as numpy int64 arrays padded to the longest sentence of the batch."""
        import numpy as np

        enc = [self.encode(t, max_len) for t in texts]
        n = max(len(e) for e in enc)
        ids = np.full((len(enc), n), self.pad, dtype=np.int64)
        mask = np.zeros((len(enc), n), dtype=np.int64)
        for i, e in enumerate(enc):
            ids[i, : len(e)] = e
            mask[i, : len(e)] = 1
        return ids, mask
