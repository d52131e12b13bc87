// The socket.io peer of bench/: socket.io on node with its Redis adapter, so
// that several processes act as one server, as the socket.io docs set it up.
//
// It speaks the load generator's subset of our protocol (docs/protocol.md)
// inside one socket.io event, "m": each frame of ours is the event's only
// argument, both ways (`42["m",{...}]` on the wire). Like the Channels
// tutorial peer it has no login and keeps memberships in memory only (a room
// of the socket, gone when the socket closes); unlike the tutorial it puts a
// socket in a room only when it sends `join`, as our clients do.
//
// Environment: PORT, PEER_REDIS_URL, PEER_REDIS_PREFIX (the adapter's key).

"use strict";

const http = require("node:http");
const crypto = require("node:crypto");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");

const port = Number(process.env.PORT || 3000);
const redisUrl = process.env.PEER_REDIS_URL || "redis://127.0.0.1:6379/11";
const prefix = process.env.PEER_REDIS_PREFIX || "socket.io";
const worker = process.pid % 1000;
let nextId = 1;

const httpServer = http.createServer((req, res) => {
  // Anything socket.io does not take: the harness's readiness probe.
  res.writeHead(200, { "Content-Type": "text/plain" });
  res.end("ok\n");
});

function room(group) {
  return `g:${group}`;
}

async function main() {
  const pub = createClient({ url: redisUrl });
  const sub = pub.duplicate();
  pub.on("error", (err) => console.error("redis pub:", err.message));
  sub.on("error", (err) => console.error("redis sub:", err.message));
  await Promise.all([pub.connect(), sub.connect()]);

  const io = new Server(httpServer, {
    adapter: createAdapter(pub, sub, { key: prefix }),
    transports: ["websocket"],
    // The load generator sends an Origin; nothing to check for a benchmark.
    cors: { origin: true },
  });

  io.on("connection", (socket) => {
    const user = `sio-${crypto.randomBytes(4).toString("hex")}`;
    socket.emit("m", { type: "hello", user, online: [], groups: [], last_id: 0 });

    socket.on("m", (data) => {
      if (data === null || typeof data !== "object") {
        return;
      }
      const ref = data.ref;
      if (data.type === "send") {
        const id = nextId++ * 1000 + worker;
        const ts = new Date().toISOString();
        socket.emit("m", { type: "ack", ref, id, ts });
        // "id" before "body", as ours sends it: the load generator's fast path.
        const message = { type: "message", id, from: user, to: data.to, body: data.body, ts };
        const to = data.to || {};
        if (to.all === true) {
          io.emit("m", message);
        } else if (typeof to.group === "string") {
          io.to(room(to.group)).emit("m", message);
        }
      } else if (data.type === "join" && typeof data.group === "string") {
        socket.join(room(data.group));
        const reply = { type: "joined", group: data.group, user };
        if (ref !== undefined) {
          reply.ref = ref;
        }
        socket.emit("m", reply);
      } else if (data.type === "ping") {
        socket.emit("m", { type: "pong", ref });
      }
    });
  });

  httpServer.listen(port, "127.0.0.1", 2048);

  const stop = () => {
    io.close();
    Promise.allSettled([pub.quit(), sub.quit()]).then(() => process.exit(0));
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
