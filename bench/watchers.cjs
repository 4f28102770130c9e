"use strict";
// Watchers in Node, on its built-in HTTP/2 client: the same protocol as bench/watchers.py at a
// much lower cost per message (gRPC framing is read here directly: no library, no per-message
// objects), so that the watchers, rather than the server, set the pace of a fan-out as little
// as can be.
//
//   node bench/watchers.cjs --target HOST:PORT --method /pkg.Service/Watch --request HEX \
//       --streams N [--bidi]
//
// Opens N gRPC calls (250 per HTTP/2 connection) sending the request (hex-encoded protobuf;
// --bidi: the request side is left open after it, as etcd's Watch wants), prints `ready` once
// every stream has had its first message, then `done SEQ TIME` when the last stream has change
// SEQ (the marker `chg-NNNNNN` in the message bytes; TIME in seconds on CLOCK_MONOTONIC, the
// clock of Python's time.monotonic()). A stream that ends, or whose response is not gRPC, prints
// `lost ...` and the process exits with status 1.
//
// With --tally FIELD, changes are counted rather than timed one by one: each top-level entry of
// field FIELD of a message (the repeated events field: 2 in discovery.v1.WatchResponse, 11 in
// etcd's) is one event; the message is walked field by field, not searched byte by byte. A line `expect N` on stdin asks for `all TIME MESSAGES EVENTS` once every
// stream has had N events (TIME when the last one had them; MESSAGES and EVENTS summed over the
// streams, counting only messages that carried a marker).

const http2 = require("node:http2");

const STREAMS_PER_CONNECTION = 250;

function options(argv) {
  const found = { bidi: false, tally: false };
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--bidi") found.bidi = true;
    else if (argv[i] === "--tally") found.tally = parseInt(argv[++i], 10);
    else found[argv[i].replace(/^--/, "")] = argv[++i];
  }
  return found;
}

function now() {
  return Number(process.hrtime.bigint()) / 1e9;
}

function lost(reason) {
  process.stdout.write(`lost ${reason}\n`);
  process.exit(1);
}

// The highest change marker in a message, or -1.
function latest(message) {
  let best = -1;
  let at = message.indexOf("chg-");
  while (at >= 0) {
    const seq = parseInt(message.toString("latin1", at + 4, at + 10), 10);
    if (seq > best) best = seq;
    at = message.indexOf("chg-", at + 4);
  }
  return best;
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

// How many top-level entries of length-delimited field `field` a protobuf message holds.
function entries(message, field) {
  let count = 0;
  let at = 0;
  while (at < message.length) {
    let tag;
    [tag, at] = varint(message, at);
    const wire = tag & 7;
    if (wire === 0) [, at] = varint(message, at);
    else if (wire === 1) at += 8;
    else if (wire === 5) at += 4;
    else if (wire === 2) {
      let length;
      [length, at] = varint(message, at);
      at += length;
      if (tag >>> 3 === field) count += 1;
    } else lost(`unexpected wire type ${wire}`);
  }
  return count;
}

// --tally: events and messages per stream, and the `expect N` request from stdin.
function tally(streams, field) {
  const events = new Array(streams).fill(0);
  let messages = 0;
  let total = 0;
  let expected = -1;
  let reached = 0;
  function check(k, before) {
    if (expected >= 0 && before < expected && events[k] >= expected) {
      reached += 1;
      if (reached === streams) {
        process.stdout.write(`all ${now()} ${messages} ${total}\n`);
      }
    }
  }
  let input = "";
  process.stdin.on("data", (chunk) => {
    input += chunk.toString();
    let newline;
    while ((newline = input.indexOf("\n")) >= 0) {
      const line = input.slice(0, newline).trim().split(" ");
      input = input.slice(newline + 1);
      if (line[0] === "expect") {
        expected = parseInt(line[1], 10);
        reached = events.filter((n) => n >= expected).length;
        if (reached === streams) process.stdout.write(`all ${now()} ${messages} ${total}\n`);
      }
    }
  });
  return (k, bytes) => {
    const found = entries(bytes, field);
    if (found) {
      const before = events[k];
      events[k] += found;
      messages += 1;
      total += found;
      check(k, before);
    }
  };
}

function main() {
  const args = options(process.argv.slice(2));
  const streams = parseInt(args.streams, 10);
  const message = Buffer.from(args.request, "hex");
  const frame = Buffer.alloc(5 + message.length);
  frame.writeUInt32BE(message.length, 1);
  message.copy(frame, 5);
  const sessions = [];
  for (let i = 0; i < Math.ceil(streams / STREAMS_PER_CONNECTION); i++) {
    // Large flow-control windows (HTTP/2's default is 64 KB per connection): with a few
    // hundred streams on a connection, the default would let the window updates, not the
    // server, set the pace of a large fan-out.
    const session = http2.connect(`http://${args.target}`, {
      settings: { initialWindowSize: 1 << 20 },
    });
    session.on("connect", () => session.setLocalWindowSize(64 << 20));
    session.on("error", (error) => lost(`connection: ${error.message}`));
    sessions.push(session);
  }
  const counts = new Map();
  const count = args.tally ? tally(streams, args.tally) : null;
  let started = 0;
  for (let k = 0; k < streams; k++) {
    const call = sessions[k % sessions.length].request({
      ":method": "POST",
      ":path": args.method,
      "content-type": "application/grpc",
      te: "trailers",
    });
    call.on("response", (headers) => {
      if (headers[":status"] !== 200 || headers["grpc-status"] !== undefined) {
        lost(`status ${headers[":status"]}, grpc-status ${headers["grpc-status"]}`);
      }
    });
    let first = true;
    let last = -1;
    call.on(
      "data",
      framer((bytes) => {
        const at = now();
        if (first) {
          first = false;
          started += 1;
          if (started === streams) process.stdout.write("ready\n");
        }
        if (count) {
          count(k, bytes);
          return;
        }
        const seq = latest(bytes);
        if (seq > last) {
          last = seq;
          const count = (counts.get(seq) || 0) + 1;
          counts.set(seq, count);
          if (count === streams) process.stdout.write(`done ${seq} ${at}\n`);
        }
      }),
    );
    call.on("error", (error) => lost(error.message));
    call.on("end", () => lost("the stream ended"));
    if (args.bidi) call.write(frame);
    else call.end(frame);
  }
}

main();
