"use strict";
// gRPC on Node's built-in HTTP/2 client, as the bench's Node tools speak it (grpc_load.cjs,
// watchers.cjs, xds_clients.cjs): the connections, the calls, the length-prefixed framing and
// the few protobuf fields those tools read, directly on the bytes (no library, no per-message
// objects), so that a tool's cost per message stays far below the server's.

const http2 = require("node:http2");

// `--name value` pairs into an object; the names in `flags` take no value (true when given).
function options(argv, flags = []) {
  const found = {};
  for (const flag of flags) found[flag] = false;
  for (let i = 0; i < argv.length; i++) {
    const name = argv[i].replace(/^--/, "");
    if (flags.includes(name)) found[name] = true;
    else found[name] = argv[++i];
  }
  return found;
}

// Seconds on CLOCK_MONOTONIC, the clock of Python's time.monotonic().
function now() {
  return Number(process.hrtime.bigint()) / 1e9;
}

// The tool cannot go on: says why on stdout (its parent reads it) and exits with status 1.
function lost(reason) {
  process.stdout.write(`lost ${reason}\n`);
  process.exit(1);
}

// One message as a gRPC frame: uncompressed flag, big-endian length, the bytes.
function framed(message) {
  const frame = Buffer.alloc(5 + message.length);
  frame.writeUInt32BE(message.length, 1);
  message.copy(frame, 5);
  return frame;
}

// Calls onMessage(bytes) for each length-prefixed gRPC message in a stream's data.
function framer(onMessage) {
  let pending = Buffer.alloc(0);
  return (chunk) => {
    pending = pending.length ? Buffer.concat([pending, chunk]) : chunk;
    while (pending.length >= 5) {
      if (pending[0] !== 0) lost("a compressed message");
      const end = 5 + pending.readUInt32BE(1);
      if (pending.length < end) break;
      onMessage(pending.subarray(5, end));
      pending = pending.subarray(end);
    }
  };
}

// The protobuf varint at `at`: [value, the offset after it].
function varint(bytes, at) {
  let value = 0;
  let shift = 0;
  for (;;) {
    const byte = bytes[at++];
    value += (byte & 0x7f) * 2 ** shift;
    if (byte < 0x80) return [value, at];
    shift += 7;
  }
}

// The top-level fields of a protobuf message: [number, wire type, value (a Buffer for
// length-delimited fields, a Number for varints, null otherwise), the field's whole encoding
// (key included)].
function fields(bytes) {
  const found = [];
  let at = 0;
  while (at < bytes.length) {
    const start = at;
    let key;
    [key, at] = varint(bytes, at);
    const wire = key & 7;
    let value = null;
    if (wire === 0) [value, at] = varint(bytes, at);
    else if (wire === 2) {
      let length;
      [length, at] = varint(bytes, at);
      value = bytes.subarray(at, at + length);
      at += length;
    } else if (wire === 1) at += 8;
    else if (wire === 5) at += 4;
    else lost(`unexpected wire type ${wire}`);
    found.push([Math.floor(key / 8), wire, value, bytes.subarray(start, at)]);
  }
  return found;
}

// `count` HTTP/2 connections to `target` (HOST:PORT). `window`: large flow-control windows
// (HTTP/2's default is 64 KB per connection; with hundreds of streams on a connection it, not
// the server, would set the pace of a large fan-out). `onError(message)` for a failed one.
function connect(target, count, { window = false, onError = (m) => lost(`connection: ${m}`) }) {
  const sessions = [];
  for (let i = 0; i < count; i++) {
    const session = window
      ? http2.connect(`http://${target}`, { settings: { initialWindowSize: 1 << 20 } })
      : http2.connect(`http://${target}`);
    if (window) session.on("connect", () => session.setLocalWindowSize(64 << 20));
    session.on("error", (error) => onError(error.message));
    sessions.push(session);
  }
  return sessions;
}

// The request headers of a gRPC call to `path` (plus `extra`, e.g. authorization).
function headers(path, extra = {}) {
  const base = { ":method": "POST", ":path": path, "content-type": "application/grpc" };
  return { ...base, te: "trailers", ...extra };
}

// A long-lived call to `path` on `session` whose end, error or refusal is fatal (`lost`).
function followed(session, path) {
  const call = session.request(headers(path));
  call.on("response", (head) => {
    if (head[":status"] !== 200 || head["grpc-status"] !== undefined) {
      lost(`status ${head[":status"]}, grpc-status ${head["grpc-status"]}`);
    }
  });
  call.on("error", (error) => lost(error.message));
  call.on("end", () => lost("the stream ended"));
  return call;
}

module.exports = { options, now, lost, framed, framer, varint, fields, connect, headers, followed };
