import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { parseEventStream, requestDefaults } from "../src/api";

describe("parseEventStream", () => {
  it("returns the data of complete events and keeps an unfinished one for the next chunk", () => {
    const text = 'id: 0\nevent: queued\ndata: {"id": 0}\n\nid: 1\nevent: step\ndata: {"id"';
    expect(parseEventStream(text)).toEqual({ data: ['{"id": 0}'], rest: 'id: 1\nevent: step\ndata: {"id"' });
    const next = parseEventStream('id: 1\nevent: step\ndata: {"id"' + ": 1}\n\n");
    expect(next).toEqual({ data: ['{"id": 1}'], rest: "" });
  });

  it("joins multi-line data, accepts CRLF line ends and skips events without data", () => {
    const text = "data: a\r\ndata: b\r\n\r\n: a comment\n\nevent: ping\n\n";
    expect(parseEventStream(text)).toEqual({ data: ["a\nb"], rest: "" });
  });
});

describe("requestDefaults", () => {
  it("reads the served model's sampling defaults from the server's OpenAPI document", () => {
    // checked by tests/test_serving.py against a server whose model sets steps 7, guidance 4.5, early stop 0.05
    const openapi = JSON.parse(readFileSync(new URL("./fixtures/openapi-generate.json", import.meta.url), "utf8"));
    expect(requestDefaults(openapi)).toEqual({ steps: 7, guidance: 4.5, early_stop: 0.05 });
  });

  it("leaves out what a document does not state", () => {
    expect(requestDefaults({})).toEqual({});
    const inline = { paths: { "/v1/generate": { post: { requestBody: { content: { "application/json": {
      schema: { properties: { steps: { default: 12 }, guidance: { default: "high" } } } } } } } } } };
    expect(requestDefaults(inline)).toEqual({ steps: 12 });
  });
});
