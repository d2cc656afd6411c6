"""Pure-Python LLaMA/Vicuna tokenizer over a Hugging Face `tokenizer.json` (see tokenizer_build).

Behaviour = the legacy slow `LlamaTokenizer` of transformers 4.31 (what SQ-LLaVA trained with) =
the HF fast tokenizer with `training/assets/llama-tokenizer.json`:

* the text is split on the special tokens `<s>`, `</s>`, `<unk>`, which become their ids;
* every other non-empty segment gets SentencePiece's dummy prefix `▁` and spaces -> `▁`
  (so `</s> ASSISTANT:` -> `[2, ▁▁, ASS, IST, ANT, :]`);
* BPE by merge rank (leftmost first on ties), characters outside the vocabulary via byte
  fallback `<0xNN>`;
* `encode(..., add_bos=True)` puts `<s>` (1) first, also for an empty string (`[1]`).

No piece of the LLaMA vocabulary has `▁` after another character, so the normalised segment is
split into words `▁*[^▁]*` before BPE (the result is the same) and words are cached.
"""

from __future__ import annotations

import heapq
import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

from .conversation import IMAGE_TOKEN

IMAGE_TOKEN_INDEX = -200  # reference `IMAGE_TOKEN_INDEX` (llava/constants.py)
SPIECE_UNDERLINE = "\u2581"
DEFAULT_TOKENIZER_JSON = Path(__file__).resolve().parents[1] / "assets" / "llama-tokenizer.json"

_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


class LlamaTokenizer:
    """Encoder/decoder for a LLaMA `tokenizer.json` (BPE, byte fallback, dummy prefix)."""

    def __init__(self, tokenizer_json: dict, word_cache_size: int = 1 << 18):
        model = tokenizer_json["model"]
        if model.get("type") != "BPE":
            raise ValueError("expected a BPE tokenizer.json")
        self.vocab: Dict[str, int] = dict(model["vocab"])
        self.id_to_token: List[Optional[str]] = [None] * (max(self.vocab.values()) + 1)
        for tok, i in self.vocab.items():
            self.id_to_token[i] = tok
        for added in tokenizer_json.get("added_tokens", []):
            self.vocab[added["content"]] = added["id"]
            if added["id"] >= len(self.id_to_token):
                self.id_to_token.extend([None] * (added["id"] + 1 - len(self.id_to_token)))
            self.id_to_token[added["id"]] = added["content"]
        self.special_tokens: Dict[str, int] = {
            a["content"]: a["id"] for a in tokenizer_json.get("added_tokens", []) if a.get("special")}
        self.special_ids = frozenset(self.special_tokens.values())
        # longest first, so that no special token is cut by a shorter one
        self._special_re = re.compile("(" + "|".join(
            re.escape(t) for t in sorted(self.special_tokens, key=len, reverse=True)) + ")") \
            if self.special_tokens else None

        self.merge_ranks: Dict[Tuple[int, int], Tuple[int, int]] = {}
        for rank, m in enumerate(model["merges"]):
            a, b = m.split(" ", 1) if isinstance(m, str) else m
            ia, ib, iab = self.vocab.get(a), self.vocab.get(b), self.vocab.get(a + b)
            if ia is None or ib is None or iab is None:
                raise ValueError(f"merge {a!r} {b!r} refers to unknown pieces")
            self.merge_ranks.setdefault((ia, ib), (rank, iab))

        self.unk_token: str = model.get("unk_token") or "<unk>"
        self.unk_id: int = self.vocab[self.unk_token]
        self.bos_id: int = self.vocab.get("<s>", 1)
        self.eos_id: int = self.vocab.get("</s>", 2)
        self.byte_fallback: bool = bool(model.get("byte_fallback", False))
        self.fuse_unk: bool = bool(model.get("fuse_unk", False))
        self._byte_ids = [self.vocab.get("<0x%02X>" % b) for b in range(256)]
        self._id_byte: Dict[int, int] = {}
        for tok, i in self.vocab.items():
            m = _BYTE_PIECE.match(tok)
            if m:
                self._id_byte[i] = int(m.group(1), 16)
        self._bpe_word = lru_cache(maxsize=word_cache_size)(self._bpe_word_uncached)

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_file(cls, path: Union[str, Path] = DEFAULT_TOKENIZER_JSON) -> "LlamaTokenizer":
        with open(path, encoding="utf-8") as f:
            return cls(json.load(f))

    @property
    def vocab_size(self) -> int:
        return len(self.id_to_token)

    # ------------------------------------------------------------------ encoding

    def _bpe_word_uncached(self, word: str) -> Tuple[int, ...]:
        ids: List[int] = []
        for ch in word:
            i = self.vocab.get(ch)
            if i is not None:
                ids.append(i)
            elif self.byte_fallback and all(self._byte_ids[b] is not None for b in ch.encode("utf-8")):
                ids.extend(self._byte_ids[b] for b in ch.encode("utf-8"))
            elif self.fuse_unk and ids and ids[-1] == self.unk_id:
                continue
            else:
                ids.append(self.unk_id)
        n = len(ids)
        if n < 2:
            return tuple(ids)
        ranks = self.merge_ranks
        # doubly linked list over symbols + heap of (rank, position, left id, right id)
        nxt = list(range(1, n + 1))
        prv = list(range(-1, n - 1))
        alive = [True] * n
        heap = []
        for p in range(n - 1):
            r = ranks.get((ids[p], ids[p + 1]))
            if r is not None:
                heap.append((r[0], p, ids[p], ids[p + 1], r[1]))
        heapq.heapify(heap)
        while heap:
            _, p, a, b, ab = heapq.heappop(heap)
            q = nxt[p]
            if not alive[p] or q >= n or ids[p] != a or ids[q] != b:
                continue  # stale entry
            ids[p] = ab
            alive[q] = False
            nxt[p] = nxt[q]
            if nxt[q] < n:
                prv[nxt[q]] = p
            left = prv[p]
            if left >= 0:
                r = ranks.get((ids[left], ab))
                if r is not None:
                    heapq.heappush(heap, (r[0], left, ids[left], ab, r[1]))
            right = nxt[p]
            if right < n:
                r = ranks.get((ab, ids[right]))
                if r is not None:
                    heapq.heappush(heap, (r[0], p, ab, ids[right], r[1]))
        out = []
        p = 0
        while p < n:
            out.append(ids[p])
            p = nxt[p]
        return tuple(out)

    _WORD = re.compile(SPIECE_UNDERLINE + "*[^" + SPIECE_UNDERLINE + "]*")

    def _encode_segment(self, text: str) -> List[int]:
        """One segment between special tokens: dummy prefix, spaces -> ▁, BPE."""
        if not text:
            return []
        norm = SPIECE_UNDERLINE + text.replace(" ", SPIECE_UNDERLINE)
        out: List[int] = []
        for word in self._WORD.findall(norm):
            if word:
                out.extend(self._bpe_word(word))
        return out

    def split_special(self, text: str) -> List[str]:
        """The text split on special tokens (kept as their own items), empty parts dropped."""
        if self._special_re is None:
            return [text] if text else []
        return [s for s in self._special_re.split(text) if s]

    def encode(self, text: str, add_bos: bool = True) -> List[int]:
        ids: List[int] = [self.bos_id] if add_bos else []
        for seg in self.split_special(text):
            sid = self.special_tokens.get(seg)
            if sid is not None:
                ids.append(sid)
            else:
                ids.extend(self._encode_segment(seg))
        return ids

    def encode_batch(self, texts: Iterable[str], add_bos: bool = True) -> List[List[int]]:
        return [self.encode(t, add_bos) for t in texts]

    def tokens(self, ids: Sequence[int]) -> List[str]:
        return [self.id_to_token[i] for i in ids]

    # ------------------------------------------------------------------ decoding

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        """The tokenizer.json decoder: ▁ -> space, byte fallback (invalid UTF-8 -> U+FFFD per
        byte), fuse, strip one leading space."""
        parts: List[str] = []
        pending = bytearray()

        def flush() -> None:
            if pending:
                try:
                    parts.append(pending.decode("utf-8"))
                except UnicodeDecodeError:
                    parts.append("\ufffd" * len(pending))
                pending.clear()

        for i in ids:
            i = int(i)
            if skip_special and i in self.special_ids:
                continue
            b = self._id_byte.get(i)
            if b is not None:
                pending.append(b)
                continue
            flush()
            tok = self.id_to_token[i] if 0 <= i < len(self.id_to_token) else None
            parts.append((tok if tok is not None else self.unk_token).replace(SPIECE_UNDERLINE, " "))
        flush()
        text = "".join(parts)
        return text[1:] if text.startswith(" ") else text


# ---------------------------------------------------------------------- image prompts

def tokenize_image_prompt(prompt: str, tok: LlamaTokenizer,
                          image_token: str = IMAGE_TOKEN) -> List[List[int]]:
    """Reference `tokenizer_image_token` chunks: the prompt split on `<image>`, each chunk encoded
    with BOS (an empty chunk is `[1]`), the BOS dropped from every chunk after the first. The
    image embeddings go between consecutive chunks."""
    chunks = [tok.encode(c, add_bos=True) for c in prompt.split(image_token)]
    return [c if k == 0 else c[1:] for k, c in enumerate(chunks)]


def tokenizer_image_token(prompt: str, tok: LlamaTokenizer,
                          image_token_index: int = IMAGE_TOKEN_INDEX,
                          image_token: str = IMAGE_TOKEN) -> List[int]:
    """Flat ids with `image_token_index` (-200) where each `<image>` was (reference
    `tokenizer_image_token` in `sqllava/mm_utils.py`)."""
    out: List[int] = []
    for k, chunk in enumerate(tokenize_image_prompt(prompt, tok, image_token)):
        if k:
            out.append(image_token_index)
        out.extend(chunk)
    return out


@lru_cache(maxsize=4)
def _default(path: str) -> LlamaTokenizer:
    return LlamaTokenizer.from_file(path)


def load_default_tokenizer(path: Union[str, Path] = DEFAULT_TOKENIZER_JSON) -> LlamaTokenizer:
    """The committed LLaMA/Vicuna tokenizer (training/assets/llama-tokenizer.json), loaded once."""
    return _default(str(path))
