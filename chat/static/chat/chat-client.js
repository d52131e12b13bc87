/* ChatClient: a small, UI-free client for the chat protocol (docs/protocol.md).
 *
 * Load it with a plain <script> tag; it defines `window.ChatClient` and
 * nothing else. The page must be logged in (the session cookie is the only
 * identity), and be served by the chat site (same origin as the socket).
 *
 *   const client = new ChatClient();                 // ws(s)://<this host>/ws/chat/
 *   client.on("hello", (h) => ...);                  // after every (re)connect
 *   client.on("message", (m) => ...);                // each message once, live or synced
 *   client.on("presence", (p) => ...);               // any server event type, batches unwrapped
 *   client.on("status", (s) => ...);                 // {state: "connecting" | "online" |
 *                                                    //  "reconnecting" | "logged-out", ...}
 *   client.connect();
 *   const ack = await client.request({type: "send", to: {all: true}, body: "hi"});
 *   // request() resolves with the reply carrying its `ref`, or rejects with an
 *   // Error whose `code` is the protocol's error code ("rate_limited", ...),
 *   // "disconnected", "not_connected" or "timeout".
 *
 * Reconnecting: after an unexpected close (including 1012, a server restart)
 * it reconnects with exponential backoff and full jitter (a random wait
 * below a ceiling of 0.5 s doubling up to 30 s). After every reconnect it
 * sends `sync` from the highest message id it has seen (or from where a sync
 * cut off by a close had got to) and emits each missed message as a
 * "message" event; ids already seen are dropped, so listeners never get one
 * twice. Then (protocol 1.2) it sends `changes` from the highest `rev` it has
 * seen and emits each message that changed meanwhile (edited, deleted, its
 * reactions) as a "changed" event carrying the message as it is now.
 *
 * The "offline" status that announces a wait carries `retryIn` (ms) and
 * `retryAt` (a Date.now() time), so a page can count down. The wait is cut
 * short when the browser says the network is back (`online`) or the tab
 * becomes visible again: nobody should stare at a countdown to a server that
 * is already there.
 *
 * Logging out closes the socket with 1008; a refused handshake (session gone)
 * looks like a failed connection. So after every close the client asks the
 * server whether the session is still logged in (a HEAD request to
 * `sessionUrl`, default "/", which redirects when it is not) and, if not,
 * stops and emits status "logged-out" instead of retrying forever.
 */
(function (root) {
  "use strict";

  const MAX_DELAY = 30000;
  const BASE_DELAY = 500;
  // After a handshake refused by the command budget: the default budget
  // (5 tokens a second) has the page's opening reads back after this.
  const BUDGET_PAUSE = 2000;

  class ChatClient {
    constructor(options = {}) {
      const scheme = location.protocol === "https:" ? "wss:" : "ws:";
      this.url = options.url || `${scheme}//${location.host}/ws/chat/`;
      this.sessionUrl = options.sessionUrl || "/";
      this.timeout = options.timeout || 15000;
      this.listeners = {};
      this.pending = new Map();
      this.seen = new Set();
      this.lastId = 0;
      // Where a sync cut off by a close had got to (else null): the next one
      // starts there, not at lastId, which a live message that came after the
      // hello may have raised past messages stored just before it.
      this.resumeFrom = null;
      // Protocol 1.2: the highest change number seen, and where `changes` resumes.
      this.lastRev = 0;
      this.changesFrom = null;
      this.changeRounds = 0;  // `changes` rounds completed (tests and debugging)
      this.nextRef = 1;
      this.attempt = 0;
      this.greeted = false;   // a hello has been received on some connection
      this.syncs = 0;         // sync rounds completed (tests and debugging)
      this.socket = null;
      this.stopped = false;
      this.timer = null;
      this.retryAt = null;
      if (options.retryOnWake !== false) {
        window.addEventListener("online", () => this.retryNow());
        document.addEventListener("visibilitychange", () => { if (!document.hidden) this.retryNow(); });
      }
    }

    /** Listen to a server event type, or "status". */
    on(type, fn) { (this.listeners[type] = this.listeners[type] || []).push(fn); return this; }

    emit(type, event) {
      for (const fn of this.listeners[type] || []) {
        try { fn(event); } catch (e) { console.error(e); }
      }
    }

    get connected() { return !!this.socket && this.socket.readyState === WebSocket.OPEN; }

    connect() {
      this.stopped = false;
      clearTimeout(this.timer);
      this.retryAt = null;
      this.emit("status", {state: this.greeted ? "reconnecting" : "connecting", attempt: this.attempt});
      let opened = false;
      const socket = new WebSocket(this.url);
      this.socket = socket;
      socket.onopen = () => { opened = true; };
      socket.onmessage = (frame) => this.handleFrame(frame.data);
      socket.onclose = (close) => {
        if (this.socket !== socket) return;
        this.socket = null;
        for (const [, p] of this.pending) p.reject(codedError("disconnected", "the connection closed"));
        this.pending.clear();
        if (this.stopped) return;
        // A logout closes with 1008, a lost session makes the handshake fail,
        // and a server may not manage to send its close code at all: so after
        // any close, ask the server whether the session still holds before
        // retrying (a server that is down counts as "yes, keep trying").
        this.emit("status", {state: "offline", code: close.code, opened});
        this.checkSession().then((ok) => {
          // Already trying again (retryNow while the session was being checked).
          if (this.stopped || this.socket) return;
          if (ok) this.scheduleReconnect(close.code, close.reason);
          else { this.stopped = true; this.emit("status", {state: "logged-out", code: close.code}); }
        });
      };
    }

    /** Close for good (no reconnect). */
    close() {
      this.stopped = true;
      clearTimeout(this.timer);
      if (this.socket) this.socket.close(1000);
    }

    /** Resolves false only when the server says the session is logged out. */
    async checkSession() {
      try {
        const response = await fetch(this.sessionUrl, {method: "HEAD", redirect: "manual", cache: "no-store"});
        return !(response.type === "opaqueredirect" || response.status === 401 || response.status === 403);
      } catch (e) {
        return true; // the server is unreachable: keep trying
      }
    }

    scheduleReconnect(code, reason) {
      // Full jitter (anywhere from 0 to the ceiling), the first retry too: the
      // clients of a restarting worker, already closed over CHAT_RESTART_SPREAD,
      // stay spread instead of meeting again one backoff step later.
      // 4429 "rate_limited": sockets opened faster than the user's command
      // budget (reloads in a row); it refills within seconds, so the usual
      // backoff after a pause that leaves room for the page's opening reads.
      // Any other 4429: this user or address has as many sockets open as it
      // may; trying soon would only be refused again: at least half the longest wait.
      const backoff = Math.random() * Math.min(MAX_DELAY, BASE_DELAY * 2 ** this.attempt);
      const delay = code !== 4429 ? backoff
        : reason === "rate_limited" ? BUDGET_PAUSE + backoff
        : MAX_DELAY / 2 + Math.random() * MAX_DELAY / 2;
      this.attempt += 1;
      this.retryAt = Date.now() + delay;
      this.emit("status", {state: "offline", code, retryIn: delay, retryAt: this.retryAt, attempt: this.attempt});
      this.timer = setTimeout(() => { if (!this.socket) this.connect(); }, delay);
    }

    /** Reconnect now instead of waiting for the backoff timer. */
    retryNow() { if (!this.socket && !this.stopped) this.connect(); }

    handleFrame(text) {
      let event;
      try { event = JSON.parse(text); } catch (e) { return; }
      const events = event.type === "batch" ? event.events : [event];
      for (const e of events) this.handleEvent(e);
    }

    handleEvent(event) {
      if (event.type === "hello") {
        const resumed = this.greeted;
        this.greeted = true;
        this.attempt = 0;
        if (!resumed) {
          this.lastId = Math.max(this.lastId, event.last_id || 0);
          this.lastRev = Math.max(this.lastRev, event.last_rev || 0);
        }
        this.emit("status", {state: "online"});
        this.emit("hello", Object.assign({resumed}, event));
        if (resumed) this.catchUp();
        return;
      }
      this.noteRev(event);
      if (event.type === "message" && !this.accept(event)) return;
      if (event.ref !== undefined && this.pending.has(event.ref)) {
        const p = this.pending.get(event.ref);
        this.pending.delete(event.ref);
        if (event.type === "error") p.reject(codedError(event.code, event.message));
        else p.resolve(event);
        if (event.type === "error") return; // answered to its caller, not broadcast
      }
      this.emit(event.type, event);
    }

    accept(message) {
      if (this.seen.has(message.id)) return false;
      this.seen.add(message.id);
      this.lastId = Math.max(this.lastId, message.id);
      return true;
    }

    /** The highest `rev` seen, from messages, edits, deletes and reactions (1.2). */
    noteRev(event) {
      const rev = event.type === "edited" || event.type === "deleted"
        ? event.message && event.message.rev : event.rev;
      if (typeof rev === "number") this.lastRev = Math.max(this.lastRev, rev);
    }

    /** After a reconnect: every message with an id above the highest seen, then every change. */
    async catchUp() {
      let since = this.resumeFrom ?? this.lastId;
      this.resumeFrom = since;
      // Taken now, before live events of this connection raise lastRev.
      const revFrom = this.changesFrom ?? this.lastRev;
      this.changesFrom = revFrom;
      try {
        for (;;) {
          const reply = await this.request({type: "sync", since});
          for (const m of reply.messages) {
            since = Math.max(since, m.id);
            if (this.accept(m)) this.emit("message", Object.assign({type: "message"}, m));
          }
          this.resumeFrom = since;
          if (!reply.more || !reply.messages.length) break;
        }
        this.resumeFrom = null;
        this.syncs += 1;
        this.emit("synced", {since});
      } catch (e) {
        // The socket closed mid-sync: the next hello syncs again.
        return;
      }
      await this.catchUpChanges(revFrom);
    }

    /** Every message whose `rev` is above `rev`, as it is now, each as a "changed" event. */
    async catchUpChanges(rev) {
      try {
        for (;;) {
          const reply = await this.request({type: "changes", since: rev});
          for (const m of reply.messages) {
            rev = Math.max(rev, m.rev);
            this.emit("changed", Object.assign({type: "changed"}, m));
          }
          this.changesFrom = rev;
          if (!reply.more || !reply.messages.length) break;
        }
        this.changesFrom = null;
        this.lastRev = Math.max(this.lastRev, rev);
        this.changeRounds += 1;
      } catch (e) {
        // Closed meanwhile (the next hello asks again), or a server before 1.2.
      }
    }

    /** Send a command that gets no reply (`typing`); dropped while disconnected. */
    send(command) {
      if (this.connected) this.socket.send(JSON.stringify(command));
    }

    /** Send a command with a fresh `ref`; resolves with the reply that carries it. */
    request(command) {
      const ref = String(this.nextRef++);
      return new Promise((resolve, reject) => {
        if (!this.connected) { reject(codedError("not_connected", "not connected")); return; }
        const timer = setTimeout(() => {
          this.pending.delete(ref);
          reject(codedError("timeout", "no answer from the server"));
        }, this.timeout);
        this.pending.set(ref, {
          resolve: (v) => { clearTimeout(timer); resolve(v); },
          reject: (e) => { clearTimeout(timer); reject(e); },
        });
        this.socket.send(JSON.stringify(Object.assign({}, command, {ref})));
      });
    }
  }

  function codedError(code, message) { return Object.assign(new Error(message), {code}); }

  root.ChatClient = ChatClient;
})(window);
