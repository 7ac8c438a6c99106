// Prompt -> token ids for the text encoder, as the Python side's `tokenizers` gives them:
// Hugging Face's tokenizers.js reads the same tokenizer.json (BERT normaliser, WordPiece,
// [CLS] ... [SEP]); truncation to the export's `max_length` is done here, as tokenizers.js
// leaves the file's truncation setting aside.

import { Tokenizer } from "@huggingface/tokenizers";

export type TokenizerJson = Record<string, unknown>;

export interface PromptTokens {
  ids: BigInt64Array; // (length,) int64, as the ONNX graph takes them
  length: number;
}

/** Token ids of at most `maxLength`, the last kept for [SEP] (truncation "longest first" of one text). */
export function truncate(ids: number[], maxLength: number): number[] {
  if (ids.length <= maxLength) return ids;
  return [...ids.slice(0, maxLength - 1), ids[ids.length - 1]];
}

export class WordPieceTokens {
  private readonly tokenizer: Tokenizer;

  constructor(
    tokenizerJson: TokenizerJson,
    private readonly maxLength: number,
  ) {
    this.tokenizer = new Tokenizer(tokenizerJson, {});
  }

  encode(prompt: string): PromptTokens {
    const ids = truncate(this.tokenizer.encode(prompt).ids, this.maxLength);
    return { ids: BigInt64Array.from(ids, (id) => BigInt(id)), length: ids.length };
  }
}
