"""LLaMA/Vicuna tokenizer: training/sqllava/tokenizer.py against three references.

* llama-tokenizer-js (Meta's vocabulary + HF merges, no special tokens), per segment;
* @huggingface/tokenizers (JS) loading the committed training/assets/llama-tokenizer.json;
* SentencePiece 0.1.97 itself, on a BPE ModelProto built from the same vocabulary with
  Meta's score order (what the legacy slow tokenizer of transformers 4.31 runs).

Node is called once per session (module fixture); tests needing it skip without node.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from training.sqllava import tokenizer_build as tb  # noqa: E402
from training.sqllava.conversation import (  # noqa: E402
    DESCRIBE_BRIEF, V1, V1_SQ, first_user_message, sq_training_text)
from training.sqllava.tokenizer import (  # noqa: E402
    IMAGE_TOKEN_INDEX, LlamaTokenizer, load_default_tokenizer, tokenize_image_prompt,
    tokenizer_image_token)

ASSET = ROOT / "training" / "assets" / "llama-tokenizer.json"
CONFIG = ROOT / "training" / "assets" / "tokenizer_config.json"
ORACLE = ROOT / "training" / "scripts" / "tokenizer_oracle.mjs"
HAVE_JS = shutil.which("node") is not None and tb.LLAMA_TOKENIZER_JS.exists() \
    and (ROOT / "node_modules" / "@huggingface" / "tokenizers").exists()
needs_js = pytest.mark.skipif(not HAVE_JS, reason="node / node_modules not available")

V1_PROMPT = V1.prompt([("USER", first_user_message(DESCRIBE_BRIEF)), ("ASSISTANT", None)])
SQ_TEXT = sq_training_text([
    ("USER", "What is in the picture?", "A dog on a beach."),
    ("VUSER", "What breed might the dog be?", "It looks like a golden retriever."),
    ("USER", "Is it  sunny?\nAnswer briefly.", "Yes."),
])
SQ_PROMPT = V1_SQ.prompt([("USER", first_user_message("Describe it.")), ("ASSISTANT", "A cat."),
                          ("VUSER", None)])

PLAIN = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    " leading space", "   three leading", "trailing space ", "trailing two  ",
    "multiple   spaces    inside", " ", "  ", "a",
    "tab\there\t\tdouble", "new\nline", "\n\nstarts with newlines", "ends with newline\n",
    "mixed \t\n spaces\r\n",
    "café naïve résumé Ångström Žluťoučký", "日本語のテキストです。", "中文测试，你好！", "한국어",
    "emoji 🤖👍🏽 and ZWJ 👨‍👩‍👧", "math ∑ x² ≤ ∞", "numbers 1234567890 3.14159",
    "code: def f(x):\n    return x ** 2\n", "URL https://example.com/a?b=c&d=e#f",
    "USER: ", "\nWhat is in the image? ASSISTANT:",
    "<image>", "<img> <S> </ s> <unk", "VUSER:",
    V1_PROMPT.split("<image>")[0], V1_PROMPT.split("<image>")[1],
    V1_PROMPT, SQ_PROMPT.split("<image>")[0],
]
# strings with special tokens written in them
SPECIAL = [
    "A1</s>VUSER: Q2</s> ASSISTANT: A2</s>",
    "</s>VUSER:", "</s> ASSISTANT:", "</s>", "<s>", "<unk>", "x<s>y</s>z<unk>w",
    "</s></s>  </s>", "Hello</s>\nworld", "<s> USER: hi</s>",
    SQ_TEXT, SQ_TEXT.split("<image>")[1], SQ_PROMPT, SQ_PROMPT.split("<image>")[1],
]


@pytest.fixture(scope="module")
def tok() -> LlamaTokenizer:
    return load_default_tokenizer()


def _segments(tok: LlamaTokenizer, text: str):
    return tok.split_special(text)


def _all_js_inputs(tok):
    strings = list(PLAIN) + list(SPECIAL)
    for s in SPECIAL:
        strings += [seg for seg in _segments(tok, s) if seg not in tok.special_tokens]
    return list(dict.fromkeys(strings))


@pytest.fixture(scope="module")
def js(tok):
    if not HAVE_JS:
        pytest.skip("node / node_modules not available")
    strings = _all_js_inputs(tok)
    req = {"strings": strings, "tokenizer_json": str(ASSET), "tokenizer_config": str(CONFIG)}
    res = subprocess.run(["node", str(ORACLE)], input=json.dumps(req), capture_output=True,
                         text=True, cwd=str(ROOT), timeout=120)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    return {s: (lt, hf, dec) for s, lt, hf, dec in zip(strings, out["ltjs"], out["hf"], out["hf_decoded"])}


def _segmentwise_reference(tok, js, text):
    """llama-tokenizer-js on each segment between special tokens (BOS only at the start)."""
    ids = [1]
    for seg in _segments(tok, text):
        if seg in tok.special_tokens:
            ids.append(tok.special_tokens[seg])
        else:
            ids += js[seg][0][1:]  # drop llama-tokenizer-js's BOS
    return ids


# ----------------------------------------------------------------------------- basics

def test_ids_and_sizes(tok):
    assert (tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    assert tok.vocab_size == 32000
    assert tok.encode("") == [1] and tok.encode("", add_bos=False) == []
    assert tok.encode("Hello world") == [1, 15043, 3186]


def test_known_special_layouts(tok):
    """The ids docs/model-bundle.md quotes."""
    assert tok.encode("</s>VUSER:", add_bos=False) == [2, 478, 11889, 29901]
    assert tok.tokens(tok.encode("</s>VUSER:", add_bos=False)) == ["</s>", "▁V", "USER", ":"]
    ids = tok.encode("</s> ASSISTANT:", add_bos=False)
    assert ids == [2, 29871, 319, 1799, 9047, 13566, 29901]
    assert tok.tokens(ids) == ["</s>", "▁", "▁A", "SS", "IST", "ANT", ":"]


# ----------------------------------------------------------------------------- JS references

@needs_js
def test_plain_strings_match_llama_tokenizer_js(tok, js):
    for s in PLAIN:
        assert tok.encode(s) == js[s][0], s


@needs_js
def test_special_strings_match_segmentwise_llama_tokenizer_js(tok, js):
    for s in SPECIAL:
        assert tok.encode(s) == _segmentwise_reference(tok, js, s), s
    assert tok.encode("A1</s>VUSER: Q2</s> ASSISTANT: A2</s>").count(2) == 3


@needs_js
def test_hf_tokenizers_js_on_committed_json(tok, js):
    for s in PLAIN + SPECIAL:
        assert tok.encode(s) == js[s][1], s


@needs_js
def test_decode_matches_hf_tokenizers_js(tok, js):
    for s in PLAIN + SPECIAL:
        assert tok.decode(js[s][1]) == js[s][2], s


def test_decode_round_trips(tok):
    for s in PLAIN:
        assert tok.decode(tok.encode(s)) == s, s
    # text after a special token carries its own dummy-prefix space
    ids = tok.encode("A</s> B")
    assert tok.decode(ids) == "A  B"
    assert tok.decode(ids, skip_special=False) == "<s> A</s>  B"
    # split multi-byte characters decode to U+FFFD
    emoji = tok.encode("🤖", add_bos=False)
    assert tok.decode(emoji[:-1]).endswith("\ufffd")


# ----------------------------------------------------------------------------- SentencePiece

@pytest.fixture(scope="module")
def vocab():
    if not tb.LLAMA_TOKENIZER_JS.exists():
        pytest.skip("node_modules/llama-tokenizer-js not available")
    return tb.read_llama_tokenizer_js()


def test_committed_asset_is_reproducible(vocab):
    assert json.loads(ASSET.read_text(encoding="utf-8")) == tb.make_tokenizer_json(*vocab)
    assert json.loads(CONFIG.read_text(encoding="utf-8")) == tb.make_tokenizer_config()
    assert len(vocab[0]) == 32000 and len(vocab[1]) == 61249


def test_sentencepiece_model_converts_back(vocab, tmp_path):
    model = tb.sentencepiece_model_from_vocab(vocab[0])
    path = tmp_path / "tokenizer.model"
    path.write_bytes(model)
    out = tmp_path / "tokenizer.json"
    tb.main(["--from-sentencepiece", str(path), "--out", str(out)])
    converted = json.loads(out.read_text(encoding="utf-8"))
    assert converted["model"]["merges"] == [f"{a} {b}" for a, b in vocab[1]]
    assert converted == json.loads(ASSET.read_text(encoding="utf-8"))


def test_matches_sentencepiece_segmentwise(tok, vocab):
    """SentencePiece itself (the slow tokenizer's backend) on each segment between specials."""
    spm = pytest.importorskip("sentencepiece")
    sp = spm.SentencePieceProcessor(model_proto=tb.sentencepiece_model_from_vocab(vocab[0]))
    for s in PLAIN + SPECIAL:
        ref = [1]
        for seg in tok.split_special(s):
            ref += [tok.special_tokens[seg]] if seg in tok.special_tokens else sp.encode(seg)
        assert tok.encode(s) == ref, s


# ----------------------------------------------------------------------------- image prompts

def _reference_tokenizer_image_token(prompt, tok):
    """`tokenizer_image_token` from sqllava/mm_utils.py, verbatim logic."""
    prompt_chunks = [tok.encode(chunk) for chunk in prompt.split("<image>")]

    def insert_separator(X, sep):
        return [ele for sublist in zip(X, [sep] * len(X)) for ele in sublist][:-1]

    input_ids, offset = [], 0
    if prompt_chunks and prompt_chunks[0] and prompt_chunks[0][0] == tok.bos_id:
        offset = 1
        input_ids.append(prompt_chunks[0][0])
    for x in insert_separator(prompt_chunks, [IMAGE_TOKEN_INDEX] * (offset + 1)):
        input_ids.extend(x[offset:])
    return input_ids


def test_image_prompt(tok):
    for prompt in (V1_PROMPT, SQ_PROMPT, SQ_TEXT, "<image>\nWhat?", "no image", "a<image>b<image>c"):
        chunks = tokenize_image_prompt(prompt, tok)
        assert len(chunks) == prompt.count("<image>") + 1
        assert chunks[0][0] == 1 and all(c[:1] != [1] for c in chunks[1:])
        flat = tokenizer_image_token(prompt, tok)
        assert flat == _reference_tokenizer_image_token(prompt, tok), prompt
        assert flat.count(IMAGE_TOKEN_INDEX) == prompt.count("<image>")
    assert tokenizer_image_token("<image>\nWhat?", tok)[:4] == [1, -200, 29871, 13]
    pre, post = tokenize_image_prompt(V1_PROMPT, tok)
    assert pre == tok.encode(V1_PROMPT.split("<image>")[0])
    assert post == tok.encode(V1_PROMPT.split("<image>")[1])[1:]


def test_many_short_strings_are_fast(tok):
    import time
    texts = [f"{V1_PROMPT} answer number {i} is a dog</s>" for i in range(3000)]
    t = time.perf_counter()
    tok.encode_batch(texts)
    assert time.perf_counter() - t < 5.0
