"use strict";
// xDS or Watch followers in Node, on its built-in HTTP/2 client: the same protocol and output
// as bench/xds_clients.py at a much lower cost per message (gRPC framing and the few protobuf
// fields needed are read here directly), so that the followers set the pace as little as can be.
//
//   node bench/xds_clients.cjs --target HOST:PORT --kind xds|watch --request HEX \
//       [--ack HEX] --streams N
//
// xds: each stream is an ADS call sending the request (a DiscoveryRequest for the assignment of
// `bench`), and acknowledging every response with --ack (the same request without the node)
// plus the response's version_info and nonce, once the data at hand has been read. watch: each stream is a healthy-only Watch call.
// A stream's state is whether instance `flip` is in its healthy set. Prints `ready` once every
// stream has its first state, then `done STATE TIME` when the last stream reaches a new common
// state (STATE 1 or 0; TIME in seconds on CLOCK_MONOTONIC). A stream that ends prints `lost ...`
// and the process exits with status 1.

const http2 = require("node:http2");

const STREAMS_PER_CONNECTION = 25;
const FLIP = Buffer.from("flip");

function options(argv) {
  const found = {};
  for (let i = 0; i < argv.length; i += 2) found[argv[i].replace(/^--/, "")] = argv[i + 1];
  return found;
}

function now() {
  return Number(process.hrtime.bigint()) / 1e9;
}

function lost(reason) {
  process.stdout.write(`lost ${reason}\n`);
  process.exit(1);
}

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

// The top-level fields of a protobuf message: [number, wire type, value (Buffer or Number),
// the field's whole encoding (key included)].
function fields(bytes) {
  const found = [];
  let at = 0;
  const varint = () => {
    let value = 0;
    let shift = 1;
    for (;;) {
      const byte = bytes[at++];
      value += (byte & 0x7f) * shift;
      if (byte < 0x80) return value;
      shift *= 128;
    }
  };
  while (at < bytes.length) {
    const start = at;
    const key = varint();
    const number = Math.floor(key / 8);
    const wire = key & 7;
    let value = null;
    if (wire === 0) value = varint();
    else if (wire === 2) {
      const length = varint();
      value = bytes.subarray(at, at + length);
      at += length;
    } else if (wire === 1) at += 8;
    else if (wire === 5) at += 4;
    else lost(`wire type ${wire}`);
    found.push([number, wire, value, bytes.subarray(start, at)]);
  }
  return found;
}

// xDS: the state of a DiscoveryResponse, and the ACK to send back: the request without the
// node (`ack`) plus the response's version_info (field 1) and nonce (field 5), which have the
// same field numbers in a DiscoveryRequest, so their encodings are copied as they came.
function xdsMessage(bytes, ack) {
  const kept = [];
  let size = ack.length;
  for (const [number, , , encoded] of fields(bytes)) {
    if (number === 1 || number === 5) {
      kept.push(encoded);
      size += encoded.length;
    }
  }
  const reply = Buffer.allocUnsafe(5 + size);
  reply[0] = 0;
  reply.writeUInt32BE(size, 1);
  let to = 5 + ack.copy(reply, 5);
  for (const field of kept) to += field.copy(reply, to);
  return [bytes.indexOf(FLIP) >= 0, reply];
}

// Watch: the new state after a WatchResponse (healthy-only), given the previous one.
function watchMessage(bytes, state) {
  let next = state;
  for (const [number, , value] of fields(bytes)) {
    if (number === 3 && value === 1) next = false; // reset: only the snapshot's PUTs count
  }
  for (const [number, , value] of fields(bytes)) {
    if (number !== 2 || value.indexOf(FLIP) < 0) continue;
    for (const [field, , type] of fields(value)) {
      if (field === 1) next = type === 1; // EVENT_TYPE_PUT
    }
  }
  return next === undefined ? false : next;
}

function main() {
  const args = options(process.argv.slice(2));
  const streams = parseInt(args.streams, 10);
  const xds = args.kind === "xds";
  const request = framed(Buffer.from(args.request, "hex"));
  const ack = Buffer.from(args.ack || "", "hex");
  const path = xds
    ? "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
    : "/discovery.v1.DiscoveryService/Watch";
  const sessions = [];
  for (let i = 0; i < Math.ceil(streams / STREAMS_PER_CONNECTION); i++) {
    const session = http2.connect(`http://${args.target}`);
    session.on("error", (error) => lost(`connection: ${error.message}`));
    sessions.push(session);
  }
  // ACKs go out once the data at hand has been read (as a gRPC client's ACK leaves after the
  // response was handed over): writing each one first would make the streams read after it
  // wait for the follower's own writes, which the Watch followers do not have.
  const acks = [];
  const sendAcks = () => {
    for (let i = 0; i < acks.length; i += 2) acks[i].write(acks[i + 1]);
    acks.length = 0;
  };
  const count = { true: 0, false: 0 };
  let ready = false;
  const move = (before, after, at) => {
    if (before === after) return;
    if (before !== undefined) count[before] -= 1;
    count[after] += 1;
    if (count[after] === streams) {
      if (ready) process.stdout.write(`done ${after ? 1 : 0} ${at}\n`);
      else {
        ready = true;
        process.stdout.write("ready\n");
      }
    }
  };
  for (let k = 0; k < streams; k++) {
    const call = sessions[k % sessions.length].request({
      ":method": "POST",
      ":path": path,
      "content-type": "application/grpc",
      te: "trailers",
    });
    call.on("response", (headers) => {
      if (headers[":status"] !== 200 || headers["grpc-status"] !== undefined) {
        lost(`status ${headers[":status"]}, grpc-status ${headers["grpc-status"]}`);
      }
    });
    let state;
    call.on(
      "data",
      framer((bytes) => {
        const at = now();
        if (xds) {
          const [next, reply] = xdsMessage(bytes, ack);
          move(state, next, at);
          state = next;
          acks.push(call, reply);
          if (acks.length === 2) setImmediate(sendAcks);
        } else {
          const next = watchMessage(bytes, state);
          move(state, next, at);
          state = next;
        }
      }),
    );
    call.on("error", (error) => lost(error.message));
    call.on("end", () => lost("the stream ended"));
    if (xds) call.write(request);
    else call.end(request);
  }
}

main();
