import { describe, expect, it } from "vitest";
import { parseEventStream } from "../src/api";

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
