"""Build the LLaMA/Vicuna `tokenizer.json` (Hugging Face format) offline.

Two sources:

* `llama-tokenizer-js` (npm, in node_modules): it embeds Meta's 32,000-piece vocabulary as
  base64 (pieces joined by "\\n", UTF-8) and the 61,249 merges of the original Hugging Face
  LLaMA `tokenizer.json` as base64 of little-endian uint16 token-id pairs, in merge order.
  We decode both here in Python (no node needed), so the committed asset is reproducible:

      python -m training.sqllava.tokenizer_build --out training/assets/llama-tokenizer.json

* a real checkpoint's SentencePiece `tokenizer.model` (`tokenizer_json_from_sentencepiece`):
  vocabulary from the pieces, merges derived from the piece scores the way transformers'
  `LlamaConverter` / `SentencePieceExtractor` does it.

The JSON layout is that of `hf-internal-testing/llama-tokenizer` (BPE with byte fallback, the
`Prepend("▁")` + `Replace(" ", "▁")` normalizer, no pre-tokenizer, `<s>` template). The special
tokens are `normalized: false`, so the text is split on them *before* normalisation and every
segment gets its own dummy-prefix `▁`: the legacy slow-tokenizer behaviour (`</s>VUSER:` ->
`[2, ▁V, USER, :]`).
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import struct
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

REPO_ROOT = Path(__file__).resolve().parents[2]
LLAMA_TOKENIZER_JS = REPO_ROOT / "node_modules" / "llama-tokenizer-js" / "llama-tokenizer.js"
ASSETS = REPO_ROOT / "training" / "assets"
DEFAULT_TOKENIZER_JSON = ASSETS / "llama-tokenizer.json"
DEFAULT_TOKENIZER_CONFIG = ASSETS / "tokenizer_config.json"

SPIECE_UNDERLINE = "\u2581"
UNK, BOS, EOS = "<unk>", "<s>", "</s>"
SPECIALS = ((0, UNK), (1, BOS), (2, EOS))
MODEL_MAX_LENGTH = 2048  # Vicuna v1.x / LLaVA-1.5 context

Merge = Tuple[str, str]


# ----------------------------------------------------------------------------- llama-tokenizer-js

def read_llama_tokenizer_js(path: Union[str, Path] = LLAMA_TOKENIZER_JS) -> Tuple[List[str], List[Merge]]:
    """(vocab by id, merges in priority order) decoded from llama-tokenizer-js's embedded data
    (its `decodeVocabulary` / `decompressMerges`)."""
    src = Path(path).read_text(encoding="utf-8")
    vocab_b64 = re.search(r'const\s+llama_vocab_base64\s*=\s*"([^"]*)"', src).group(1)
    merges_b64 = re.search(r'const\s+llama_merges_binary\s*=\s*"([^"]*)"', src).group(1)
    vocab = base64.b64decode(vocab_b64).decode("utf-8").split("\n")
    raw = base64.b64decode(merges_b64)
    ids = struct.unpack("<%dH" % (len(raw) // 2), raw)
    merges = [(vocab[ids[i]], vocab[ids[i + 1]]) for i in range(0, len(ids) - 1, 2)]
    if len(vocab) != 32000 or len(set(vocab)) != len(vocab):
        raise ValueError(f"unexpected llama-tokenizer-js vocabulary ({len(vocab)} pieces)")
    return vocab, merges


# ----------------------------------------------------------------------------- tokenizer.json

def _added_token(idx: int, content: str) -> dict:
    return {"id": idx, "content": content, "single_word": False, "lstrip": False,
            "rstrip": False, "normalized": False, "special": True}


def make_tokenizer_json(vocab: Sequence[str], merges: Sequence[Merge]) -> dict:
    """A Hugging Face LLaMA `tokenizer.json` dict for the given vocabulary and merges."""
    for idx, tok in SPECIALS:
        if vocab[idx] != tok:
            raise ValueError(f"piece {idx} is {vocab[idx]!r}, expected {tok!r}")
    for a, b in merges:
        if " " in a or " " in b:
            raise ValueError("a piece contains a space; the 'a b' merge format cannot hold it")
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [_added_token(i, t) for i, t in SPECIALS],
        "normalizer": {
            "type": "Sequence",
            "normalizers": [
                {"type": "Prepend", "prepend": SPIECE_UNDERLINE},
                {"type": "Replace", "pattern": {"String": " "}, "content": SPIECE_UNDERLINE},
            ],
        },
        "pre_tokenizer": None,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": BOS, "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": BOS, "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": BOS, "type_id": 1}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {BOS: {"id": BOS, "ids": [1], "tokens": [BOS]}},
        },
        "decoder": {
            "type": "Sequence",
            "decoders": [
                {"type": "Replace", "pattern": {"String": SPIECE_UNDERLINE}, "content": " "},
                {"type": "ByteFallback"},
                {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": 1, "stop": 0},
            ],
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": UNK,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": True,
            "byte_fallback": True,
            "vocab": {tok: i for i, tok in enumerate(vocab)},
            "merges": [f"{a} {b}" for a, b in merges],
        },
    }


def make_tokenizer_config(model_max_length: int = MODEL_MAX_LENGTH) -> dict:
    """`tokenizer_config.json` for Transformers.js / transformers (legacy LLaMA behaviour)."""
    special = {t: {"__type": "AddedToken", "content": t, "lstrip": False, "normalized": False,
                   "rstrip": False, "single_word": False} for _, t in SPECIALS}
    return {
        "tokenizer_class": "LlamaTokenizer",
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": special[BOS],
        "eos_token": special[EOS],
        "unk_token": special[UNK],
        "pad_token": None,
        "clean_up_tokenization_spaces": False,
        "legacy": True,
        "model_max_length": model_max_length,
        "padding_side": "right",
        "sp_model_kwargs": {},
    }


def dump_json(obj: dict, path: Union[str, Path]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=2)
        f.write("\n")


# ----------------------------------------------------------------------------- SentencePiece

def _load_model_proto(model: Union[str, Path, bytes]):
    from sentencepiece import sentencepiece_model_pb2 as pb2

    proto = pb2.ModelProto()
    data = model if isinstance(model, (bytes, bytearray)) else Path(model).read_bytes()
    proto.ParseFromString(bytes(data))
    return proto


def tokenizer_json_from_sentencepiece(model: Union[str, Path, bytes]) -> dict:
    """`tokenizer.json` dict from a LLaMA SentencePiece BPE `tokenizer.model` (path or bytes).

    Merges as transformers' `SentencePieceExtractor.extract(vocab_scores)`: every split `(l, r)`
    of a piece with both halves in the vocabulary is a merge, ordered by the merged piece's score
    (highest first), ties by (id of l, id of r)."""
    proto = _load_model_proto(model)
    if proto.trainer_spec.model_type != 2:  # BPE
        raise ValueError("only SentencePiece BPE models (LLaMA) are supported")
    pieces = [(p.piece, p.score) for p in proto.pieces]
    # only NORMAL (1) / USER_DEFINED (4) pieces are merge results; specials and bytes are not
    mergeable = [(p.piece, p.score) for p in proto.pieces if p.type in (1, 4)]
    ids = {p: i for i, (p, _) in enumerate(pieces)}
    found = []
    for piece, score in mergeable:
        for k in range(1, len(piece)):
            left, right = piece[:k], piece[k:]
            if left in ids and right in ids:
                found.append((-score, ids[left], ids[right], left, right))
    found.sort(key=lambda m: m[:3])
    return make_tokenizer_json([p for p, _ in pieces], [(m[3], m[4]) for m in found])


def sentencepiece_model_from_vocab(vocab: Sequence[str], scores: Optional[Sequence[float]] = None) -> bytes:
    """A LLaMA-like SentencePiece BPE ModelProto (serialised) with the given pieces. Default
    scores follow Meta's model: 0 for specials and bytes, -1e9 for runs of `▁`, -(id - 259)
    otherwise (so merge order = merged piece id)."""
    from sentencepiece import sentencepiece_model_pb2 as pb2

    proto = pb2.ModelProto()
    ts = proto.trainer_spec
    ts.model_type = pb2.TrainerSpec.BPE
    ts.vocab_size = len(vocab)
    ts.byte_fallback = True
    ts.split_digits = True
    ts.unk_id, ts.bos_id, ts.eos_id, ts.pad_id = 0, 1, 2, -1
    ns = proto.normalizer_spec
    ns.name = "identity"
    ns.add_dummy_prefix = True
    ns.remove_extra_whitespaces = False
    ns.escape_whitespaces = True
    ns.precompiled_charsmap = b""
    for i, tok in enumerate(vocab):
        sp = proto.pieces.add()
        sp.piece = tok
        if i == 0:
            sp.type = pb2.ModelProto.SentencePiece.UNKNOWN
        elif tok in (BOS, EOS):
            sp.type = pb2.ModelProto.SentencePiece.CONTROL
        elif re.fullmatch(r"<0x[0-9A-F]{2}>", tok):
            sp.type = pb2.ModelProto.SentencePiece.BYTE
        else:
            sp.type = pb2.ModelProto.SentencePiece.NORMAL
        if scores is not None:
            sp.score = float(scores[i])
        elif sp.type != pb2.ModelProto.SentencePiece.NORMAL:
            sp.score = 0.0
        elif len(tok) > 1 and set(tok) == {SPIECE_UNDERLINE}:
            sp.score = -1e9
        else:
            sp.score = -float(i - 259)
    return proto.SerializeToString()


# ----------------------------------------------------------------------------- CLI

def build(out: Union[str, Path] = DEFAULT_TOKENIZER_JSON, config_out: Optional[Union[str, Path]] = None,
          source: Union[str, Path] = LLAMA_TOKENIZER_JS) -> dict:
    vocab, merges = read_llama_tokenizer_js(source)
    tj = make_tokenizer_json(vocab, merges)
    dump_json(tj, out)
    if config_out:
        dump_json(make_tokenizer_config(), config_out)
    return tj


def main(argv: Optional[Sequence[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(DEFAULT_TOKENIZER_JSON), help="tokenizer.json to write")
    ap.add_argument("--config-out", default=None, help="also write tokenizer_config.json here")
    ap.add_argument("--from-sentencepiece", default=None, metavar="TOKENIZER_MODEL",
                    help="convert this SentencePiece tokenizer.model instead of llama-tokenizer-js")
    ap.add_argument("--source", default=str(LLAMA_TOKENIZER_JS), help="llama-tokenizer.js path")
    args = ap.parse_args(argv)
    if args.from_sentencepiece:
        tj = tokenizer_json_from_sentencepiece(args.from_sentencepiece)
        dump_json(tj, args.out)
        if args.config_out:
            dump_json(make_tokenizer_config(), args.config_out)
    else:
        tj = build(args.out, args.config_out, args.source)
    print(f"wrote {args.out}: {len(tj['model']['vocab'])} tokens, {len(tj['model']['merges'])} merges")


if __name__ == "__main__":
    main()
