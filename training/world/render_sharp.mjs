// Rasterises SVG scenes with sharp (librsvg), the second renderer of the shapes world.
// Usage: node render_sharp.mjs <jobs.json>  where jobs.json = [{"svg": "...", "out": "path.png"}, ...]
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
const require = createRequire(process.cwd() + "/package.json");
const sharp = require("sharp");
const jobs = JSON.parse(readFileSync(process.argv[2], "utf8"));
let i = 0;
async function worker() {
  while (i < jobs.length) {
    const job = jobs[i++];
    await sharp(Buffer.from(job.svg)).png().toFile(job.out);
  }
}
await Promise.all([worker(), worker()]);
console.log(`rendered ${jobs.length} svg scenes with sharp ${sharp.versions?.sharp ?? ""}`);
