"use strict";
// A gRPC load generator in Node, on its built-in HTTP/2 client: the same loads as
// bench/grpc_load.py (closed-loop unary calls; KeepAlive streams with a window of unacknowledged
// heartbeats), at a fraction of the client's cost per call, so the server sets the pace.
//
//   node bench/grpc_load.cjs --target HOST:PORT --mode unary|keepalive --method PATH \
//       --requests FILE --seconds S --connections C --in-flight N [--streams K] \
//       [--authorization "Bearer ..."]
//
// FILE holds a JSON list of hex-encoded request messages. unary: N calls in flight on each of
// C connections, each sending the next request; a call counts when its grpc-status is 0.
// keepalive: K streams spread over the connections, stream k sending requests k, k+K, ... in
// turn with up to N unacknowledged; an ack counts when its code is 0 and it holds an instance;
// at the end each stream detaches its instances (the request with field 4 `detach` set) and
// closes. Prints `started` when the window opens (every connection up), then one JSON line:
// {"ok": n, "seconds": s, "errors": {"what": count}, "client_share": its own CPU / wall time}.

const fs = require("node:fs");
const { options, framed, framer, varint, connect, headers } = require("./grpc_frames.cjs");

// "" when a KeepAliveResponse is a success (code 0, instance set), else what is wrong.
function ackProblem(bytes) {
  let at = 0;
  let code = 0;
  let instance = false;
  while (at < bytes.length) {
    let tag;
    [tag, at] = varint(bytes, at);
    const field = Math.floor(tag / 8);
    const wire = tag & 7;
    if (wire === 0) {
      let value;
      [value, at] = varint(bytes, at);
      if (field === 4) code = value;
    } else if (wire === 2) {
      let length;
      [length, at] = varint(bytes, at);
      if (field === 3) instance = true;
      at += length;
    } else if (wire === 1) at += 8;
    else if (wire === 5) at += 4;
    else return "malformed ack";
  }
  if (code !== 0) return `ack code ${code}`;
  return instance ? "" : "ack without instance";
}

// The same KeepAliveRequest with `detach` (field 4, a bool) set.
function detached(request) {
  return Buffer.concat([request, Buffer.from([0x20, 0x01])]);
}

function main() {
  const args = options(process.argv.slice(2));
  const requests = JSON.parse(fs.readFileSync(args.requests, "utf8")).map((hex) =>
    Buffer.from(hex, "hex"),
  );
  const frames = requests.map(framed);
  const seconds = parseFloat(args.seconds);
  const inFlight = parseInt(args["in-flight"], 10);
  const extra = args.authorization ? { authorization: args.authorization } : {};
  const callHeaders = headers(args.method, extra);
  const result = { ok: 0, seconds, errors: {} };
  const fail = (what) => {
    result.errors[what] = (result.errors[what] || 0) + 1;
  };
  const connections = parseInt(args.connections, 10);
  const sessions = connect(args.target, connections, {
    onError: (message) => fail(`connection: ${message}`),
  });
  let deadline = 0;
  let running = 0;
  let startedAt = 0;
  let cpuAtStart;
  const finished = () => {
    running -= 1;
    if (running === 0) {
      const cpu = process.cpuUsage(cpuAtStart);
      result.client_share = (cpu.user + cpu.system) / 1000 / (performance.now() - startedAt);
      for (const session of sessions) session.close();
      process.stdout.write(`${JSON.stringify(result)}\n`);
    }
  };

  function unaryWorker(session, index, step) {
    let n = index;
    const next = () => {
      if (performance.now() >= deadline) return finished();
      const call = session.request(callHeaders);
      let status;
      call.on("response", (head) => {
        if (head["grpc-status"] !== undefined) status = head["grpc-status"];
      });
      call.on("trailers", (trailers) => {
        status = trailers["grpc-status"];
      });
      call.on("data", () => {});
      call.on("error", (error) => fail(`stream: ${error.message}`));
      call.on("close", () => {
        if (status === "0") result.ok += 1;
        else fail(`grpc-status ${status}`);
        next();
      });
      call.end(frames[n % frames.length]);
      n += step;
    };
    next();
  }

  function keepAliveStream(session, mine) {
    const call = session.request(callHeaders);
    let unacked = 0;
    let n = 0;
    let closing = false;
    const send = () => {
      while (!closing && unacked < inFlight) {
        if (performance.now() >= deadline) {
          closing = true;
          for (const k of mine) call.write(framed(detached(requests[k])));
          call.end();
          return;
        }
        call.write(frames[mine[n % mine.length]]);
        unacked += 1;
        n += 1;
      }
    };
    call.on("response", (head) => {
      if (head["grpc-status"] !== undefined) fail(`grpc-status ${head["grpc-status"]}`);
    });
    call.on("trailers", (trailers) => {
      if (trailers["grpc-status"] !== "0") fail(`grpc-status ${trailers["grpc-status"]}`);
    });
    call.on(
      "data",
      framer((bytes) => {
        // Acks that come after the window (the detaches' among them) count for nothing, but
        // an error code is an error whenever it comes.
        const problem = ackProblem(bytes);
        const inWindow = performance.now() < deadline;
        if (problem.startsWith("ack code") || (problem && inWindow)) fail(problem);
        else if (inWindow) result.ok += 1;
        unacked -= 1;
        send();
      }),
    );
    call.on("error", (error) => fail(`stream: ${error.message}`));
    call.on("close", finished);
    send();
  }

  const start = () => {
    process.stdout.write("started\n");
    cpuAtStart = process.cpuUsage();
    startedAt = performance.now();
    deadline = startedAt + seconds * 1000;
    if (args.mode === "unary") {
      const workers = sessions.length * inFlight;
      running = workers;
      for (let w = 0; w < workers; w++) unaryWorker(sessions[w % sessions.length], w, workers);
    } else {
      const streams = Math.min(parseInt(args.streams, 10), requests.length);
      running = streams;
      for (let k = 0; k < streams; k++) {
        const mine = [];
        for (let i = k; i < requests.length; i += streams) mine.push(i);
        keepAliveStream(sessions[k % sessions.length], mine);
      }
    }
  };
  let connected = 0;
  for (const session of sessions) {
    session.on("connect", () => {
      connected += 1;
      if (connected === sessions.length) start();
    });
  }
}

main();
