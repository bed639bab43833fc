// Parses and renders Mermaid diagrams with the real Mermaid library in a
// real browser (Debian's chromium through playwright-core):
//   node mermaid.mjs FILE...
// Prints one line per file: `ok FILE SVG-BYTES` or `error FILE MESSAGE`;
// exits 1 if any failed.
import { createRequire } from "node:module";
import { readFileSync } from "node:fs";
import path from "node:path";

const modules = process.env.CAIRN_NODE_MODULES;
const require = createRequire(path.join(modules, "x.js"));
const { chromium } = require("playwright-core");

const browser = await chromium.launch({ executablePath: process.env.CAIRN_CHROMIUM, args: ["--no-sandbox"] });
let failed = 0;
try {
  const page = await browser.newPage();
  await page.setContent("<!doctype html><html><body></body></html>");
  await page.addScriptTag({ path: path.join(modules, "mermaid/dist/mermaid.min.js") });
  await page.evaluate(() => window.mermaid.initialize({ startOnLoad: false, securityLevel: "strict" }));
  for (const [i, file] of process.argv.slice(2).entries()) {
    const text = readFileSync(file, "utf8");
    const r = await page.evaluate(
      async ([text, i]) => {
        try {
          await window.mermaid.parse(text);
          const { svg } = await window.mermaid.render(`d${i}`, text);
          return { ok: true, bytes: svg.length };
        } catch (e) {
          return { ok: false, message: String(e && e.message ? e.message : e) };
        }
      },
      [text, i],
    );
    if (r.ok) {
      console.log(`ok ${file} ${r.bytes}`);
    } else {
      failed += 1;
      console.log(`error ${file} ${r.message.replace(/\s+/g, " ")}`);
    }
  }
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
