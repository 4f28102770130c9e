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
// etcd's) is one event; the message is walked field by field, not searched byte by byte. A line
// `expect N` on stdin asks for `all TIME MESSAGES EVENTS` once every
// stream has had N events (TIME when the last one had them; MESSAGES and EVENTS summed over the
// streams, counting only messages that carried a marker).

const { options, now, lost, framed, framer, varint, connect, followed } = require(
  "./grpc_frames.cjs",
);

const STREAMS_PER_CONNECTION = 250;

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
  const args = options(process.argv.slice(2), ["bidi"]);
  const streams = parseInt(args.streams, 10);
  const frame = framed(Buffer.from(args.request, "hex"));
  const connections = Math.ceil(streams / STREAMS_PER_CONNECTION);
  const sessions = connect(args.target, connections, { window: true });
  const counts = new Map();
  const count = args.tally ? tally(streams, parseInt(args.tally, 10)) : null;
  let started = 0;
  for (let k = 0; k < streams; k++) {
    const call = followed(sessions[k % sessions.length], args.method);
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
    if (args.bidi) call.write(frame);
    else call.end(frame);
  }
}

main();
