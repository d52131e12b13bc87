/* The classic demo page: plain-text frames on /socket, every frame shown as text. */
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  let socket = null;

  function log(text, kind) {
    const li = document.createElement("li");
    li.textContent = text; // frames are untrusted: never innerHTML
    li.dir = "auto"; // isolated: a right-to-left override cannot reorder the page around it
    if (kind) li.className = kind;
    $("log").append(li);
  }

  function setState(state) {
    $("state").dataset.state = state;
    $("state").textContent = state;
    $("connect").disabled = state !== "closed";
    $("close").disabled = state === "closed";
  }

  function socketUrl() {
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    const userId = $("user-id").value.trim();
    // A signed-in session wins on the server; the id only matters for guests.
    return scheme + location.host + "/socket" + (userId ? "?userId=" + encodeURIComponent(userId) : "");
  }

  function connect() {
    if (socket) return;
    setState("connecting");
    const ws = new WebSocket(socketUrl());
    socket = ws;
    ws.onopen = () => {
      setState("open");
      log("connected", "note");
      // Classic clients announce themselves; the server accepts and ignores it.
      ws.send("login," + $("user-id").value.trim());
    };
    ws.onmessage = (event) => {
      log(typeof event.data === "string" ? event.data : "(binary frame)", "frame");
    };
    ws.onclose = (event) => {
      if (socket === ws) socket = null;
      setState("closed");
      log("closed (" + event.code + ")" + (event.code === 1006 ? ": refused or lost" : ""), "note");
    };
  }

  function send(target) {
    if (!socket || socket.readyState !== WebSocket.OPEN) {
      log("not connected", "note");
      return;
    }
    socket.send(target + "," + $("message").value);
    $("message").value = "";
  }

  $("connect").addEventListener("click", connect);
  $("close").addEventListener("click", () => { if (socket) socket.close(1000); });
  $("send-user").addEventListener("click", () => send($("to-user").value.trim()));
  $("send-all").addEventListener("click", () => send("all"));
  $("send-group-a").addEventListener("click", () => send("groupA"));
  $("send-group-b").addEventListener("click", () => send("groupB"));
})();
