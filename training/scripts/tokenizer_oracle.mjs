// Reference tokenizations for training/tests/test_tokenizer.py.
// stdin: {"strings": [...], "tokenizer_json": path, "tokenizer_config": path}
// stdout: {"ltjs": [[ids]...], "hf": [[ids]...], "hf_decoded": [str...]}
//   ltjs: llama-tokenizer-js encode(s) (BOS + dummy prefix; knows no special tokens)
//   hf:   @huggingface/tokenizers Tokenizer(tokenizer.json, tokenizer_config.json).encode(s).ids
import { readFileSync } from "node:fs";
import llamaTokenizer from "llama-tokenizer-js";
import { Tokenizer } from "@huggingface/tokenizers";

const req = JSON.parse(readFileSync(0, "utf8"));
const out = { ltjs: [], hf: [], hf_decoded: [] };
let hf = null;
if (req.tokenizer_json) {
  hf = new Tokenizer(JSON.parse(readFileSync(req.tokenizer_json, "utf8")),
                     JSON.parse(readFileSync(req.tokenizer_config, "utf8")));
}
for (const s of req.strings) {
  out.ltjs.push(s.length ? llamaTokenizer.encode(s) : [1]);
  if (hf) {
    const ids = hf.encode(s).ids;
    out.hf.push(ids);
    out.hf_decoded.push(ids.length ? hf.decode(ids, { skip_special_tokens: true }) : "");
  }
}
process.stdout.write(JSON.stringify(out));
