/* The plain page: a log of events and a form, on top of ChatClient. */
(function () {
  "use strict";
  const client = new ChatClient();
  const $ = (id) => document.getElementById(id);
  const online = new Set();

  function log(text) {
    const li = document.createElement("li");
    li.textContent = text;
    $("log").prepend(li);
  }
  function renderOnline() {
    $("online").replaceChildren(...[...online].sort().map((u) => {
      const li = document.createElement("li"); li.textContent = u; return li;
    }));
  }
  function renderGroups(groups) {
    $("groups").replaceChildren(...groups.map((g) => {
      const li = document.createElement("li"); li.textContent = g; return li;
    }));
  }
  let groups = [];
  function describe(to) { return to.all ? "everyone" : to.user ? "@" + to.user : "#" + to.group; }

  client.on("status", (s) => { $("status").textContent = s.state; });
  client.on("hello", (h) => { online.clear(); h.online.forEach((u) => online.add(u)); renderOnline(); groups = h.groups; renderGroups(groups); });
  client.on("presence", (p) => { p.online ? online.add(p.user) : online.delete(p.user); renderOnline(); log(`${p.user} is ${p.online ? "online" : "offline"}`); });
  client.on("message", (m) => log(`${m.from} → ${describe(m.to)}: ${m.body}`));
  client.on("joined", (j) => { log(`${j.user} joined ${j.group}`); if (j.user === $("me").textContent && !groups.includes(j.group)) { groups.push(j.group); renderGroups(groups); } });
  client.on("left", (l) => { log(`${l.user} left ${l.group}`); if (l.user === $("me").textContent) { groups = groups.filter((g) => g !== l.group); renderGroups(groups); } });
  client.on("error", (e) => log(`error ${e.code}: ${e.message}`));

  $("send-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const kind = $("to-kind").value;
    const to = kind === "all" ? {all: true} : {[kind]: $("to-name").value};
    client.request({type: "send", to, body: $("body").value}).then(() => { $("body").value = ""; }).catch(() => {});
  });
  $("join-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    client.request({type: "join", group: $("join-name").value}).catch(() => {});
  });
  client.connect();
})();
