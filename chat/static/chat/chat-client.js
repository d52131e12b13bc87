/* ChatClient: a small client for the protocol in docs/protocol.md.
 *
 *   const client = new ChatClient({url: "/ws/chat/"});
 *   client.on("message", (m) => ...);      // any server event type
 *   client.connect();
 *   const ack = await client.request({type: "send", to: {all: true}, body: "hi"});
 *
 * It reconnects with exponential backoff and jitter, and after every
 * reconnect sends `sync` from the highest message id it has seen, dropping
 * duplicates by id, so listeners see every message once.
 */
(function (root) {
  "use strict";

  class ChatClient {
    constructor(options = {}) {
      const scheme = location.protocol === "https:" ? "wss:" : "ws:";
      this.url = options.url || `${scheme}//${location.host}/ws/chat/`;
      this.timeout = options.timeout || 10000;
      this.listeners = {};
      this.pending = new Map();
      this.seen = new Set();
      this.lastId = 0;
      this.nextRef = 1;
      this.attempt = 0;
      this.socket = null;
      this.stopped = false;
    }

    on(type, fn) { (this.listeners[type] = this.listeners[type] || []).push(fn); return this; }
    emit(type, event) { for (const fn of this.listeners[type] || []) fn(event); }

    connect() {
      this.stopped = false;
      this.emit("status", {state: "connecting"});
      const socket = new WebSocket(this.url);
      this.socket = socket;
      socket.onmessage = (frame) => this.handleFrame(frame.data);
      socket.onclose = (close) => {
        for (const [, p] of this.pending) p.reject(new Error("disconnected"));
        this.pending.clear();
        this.emit("status", {state: "offline", code: close.code});
        if (!this.stopped) this.scheduleReconnect();
      };
    }

    close() { this.stopped = true; if (this.socket) this.socket.close(); }

    scheduleReconnect() {
      const base = Math.min(30000, 500 * 2 ** this.attempt);
      const delay = base / 2 + Math.random() * base / 2;
      this.attempt += 1;
      setTimeout(() => this.connect(), delay);
    }

    handleFrame(text) {
      let event;
      try { event = JSON.parse(text); } catch (e) { return; }
      const events = event.type === "batch" ? event.events : [event];
      for (const e of events) this.handleEvent(e);
    }

    handleEvent(event) {
      if (event.type === "hello") {
        const resumed = this.lastId > 0;
        this.attempt = 0;
        this.emit("status", {state: "online"});
        this.emit("hello", event);
        if (resumed) this.catchUp(); else this.lastId = Math.max(this.lastId, event.last_id);
        return;
      }
      if (event.type === "message" && !this.accept(event)) return;
      if (event.ref !== undefined && this.pending.has(event.ref)) {
        const p = this.pending.get(event.ref);
        this.pending.delete(event.ref);
        if (event.type === "error") p.reject(Object.assign(new Error(event.message), {code: event.code}));
        else p.resolve(event);
      }
      this.emit(event.type, event);
    }

    accept(message) {
      if (this.seen.has(message.id)) return false;
      this.seen.add(message.id);
      this.lastId = Math.max(this.lastId, message.id);
      return true;
    }

    async catchUp() {
      let more = true;
      while (more) {
        const reply = await this.request({type: "sync", since: this.lastId});
        for (const m of reply.messages) if (this.accept(m)) this.emit("message", Object.assign({type: "message"}, m));
        more = reply.more;
      }
    }

    request(command) {
      const ref = String(this.nextRef++);
      return new Promise((resolve, reject) => {
        if (!this.socket || this.socket.readyState !== WebSocket.OPEN) { reject(new Error("not connected")); return; }
        const timer = setTimeout(() => { this.pending.delete(ref); reject(new Error("timed out")); }, this.timeout);
        this.pending.set(ref, {
          resolve: (v) => { clearTimeout(timer); resolve(v); },
          reject: (e) => { clearTimeout(timer); reject(e); },
        });
        this.socket.send(JSON.stringify(Object.assign({}, command, {ref})));
      });
    }
  }

  root.ChatClient = ChatClient;
})(window);
