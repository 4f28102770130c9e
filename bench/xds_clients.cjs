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
// plus the response's version_info and nonce, once the data at hand has been read. watch: each
// stream is a healthy-only Watch call.
// A stream's state is whether instance `flip` is in its healthy set. Prints `ready` once every
// stream has its first state, then `done STATE TIME` when the last stream reaches a new common
// state (STATE 1 or 0; TIME in seconds on CLOCK_MONOTONIC). A stream that ends prints `lost ...`
// and the process exits with status 1.

const { options, now, lost, framed, framer, fields, connect, followed } = require(
  "./grpc_frames.cjs",
);

const STREAMS_PER_CONNECTION = 25;
const FLIP = Buffer.from("flip");

// xDS: the state of a DiscoveryResponse, and the ACK to send back: the response's version_info
// (field 1), the request without the node (`ack`: resource_names and type_url, fields 3 and 4)
// and the response's nonce (field 5), in field-number order as protobuf libraries write a
// message; version_info and nonce have the same field numbers in a DiscoveryRequest, so their
// encodings are copied as they came.
function xdsMessage(bytes, ack) {
  let version = null;
  let nonce = null;
  for (const [number, , , encoded] of fields(bytes)) {
    if (number === 1) version = encoded;
    else if (number === 5) nonce = encoded;
  }
  if (version === null || nonce === null) lost("a response without version_info or nonce");
  const size = version.length + ack.length + nonce.length;
  const reply = Buffer.allocUnsafe(5 + size);
  reply[0] = 0;
  reply.writeUInt32BE(size, 1);
  let to = 5 + version.copy(reply, 5);
  to += ack.copy(reply, to);
  nonce.copy(reply, to);
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
  const sessions = connect(args.target, Math.ceil(streams / STREAMS_PER_CONNECTION), {});
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
    const call = followed(sessions[k % sessions.length], path);
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
    if (xds) call.write(request);
    else call.end(request);
  }
}

main();
