/* The chat page: sidebar, conversation pane and composer on top of ChatClient.
 *
 * All state lives in `state`; the DOM is drawn from it. Every piece of user
 * content (names, bodies, group names, server messages) goes in through
 * textContent or attributes, never innerHTML.
 */
(function () {
  "use strict";

  const config = JSON.parse(document.getElementById("chat-config").textContent);
  const me = config.user;
  const PAGE_SIZE = 50;
  const LANDING_PAGES = 4;
  const client = new ChatClient();
  const $ = (id) => document.getElementById(id);

  const ERROR_TEXT = {
    rate_limited: "You are sending messages too fast. Wait a moment, then try again.",
    too_large: `That message is too long to send (the limit is ${config.maxBodyChars} characters). Shorten it or split it in parts.`,
    empty_body: "Type something before sending.",
    not_member: "You are not a member of this group. Join it to read and send messages.",
    no_such_user: "There is no user with that name.",
    bad_group: "Group names are 1 to 64 letters, digits, spaces or _ - . (no space at either end).",
    too_many_groups: "You are in as many groups as one may be. Leave one to join another.",
    unavailable: "The server could not store that right now. Try again in a moment.",
    not_connected: "Not connected, so nothing was sent. Try again once the connection is back.",
    disconnected: "The connection dropped before the server confirmed it. Retry is safe: it will not be sent twice.",
    timeout: "The server did not answer in time. Try again.",
    no_such_message: "That message is gone (deleted, or no longer visible to you).",
    not_yours: "Only its author can change that message.",
    too_late: "That message is too old to edit.",
    bad_emoji: "That is not an emoji the server knows.",
    too_many_reactions: "That message already has as many different reactions as it can hold.",
    group_exists: "A group with that name exists already. Join it, or choose another name.",
    invite_only: "That group is private: ask one of its owners or admins to invite you.",
    forbidden: "Your role in this group does not allow that.",
    last_owner: "You are this group's last owner: make another member an owner first.",
    no_such_upload: "One of those files was already sent or removed. Attach it again.",
  };
  const describeError = (error) =>
    // A well-formed group name refused as a look-alike (or for invisible
    // characters): only the server's message says which group it resembles.
    (error.code === "bad_group" && /looks like|invisible/.test(error.message || "") && error.message)
    || ERROR_TEXT[error.code] || error.message || "Something went wrong.";

  // -- state -----------------------------------------------------------------

  const state = {
    online: new Set(),
    groups: [],
    conversations: new Map(), // key -> conversation
    openKey: null,
    membersOpen: window.matchMedia("(min-width: 1100px)").matches,
    // Protocol 1.2: the message being edited in place, the one being answered, an open picker.
    editingId: null,
    replyTo: null,
    pickerFor: null,
    pickerQuery: "",
    pickerOpened: false,
    menuFor: null,
    // Protocol 1.2: seconds after its `ts` that a message may be edited (hello; 0: always).
    editWindow: null,
    // Protocol 1.2: display names by username, as last heard (hello, messages, members, profile).
    names: new Map(),
    // Protocol 1.2: the private groups among one's own (conversations, joined), marked by a lock.
    privateGroups: new Set(),
  };
  const nameOf = (user) => state.names.get(user) || user;
  function learnName(user, name) {
    if (user && typeof name === "string" && name) state.names.set(user, name);
  }
  /** The names a message object carries: its sender's, and the quoted sender's. */
  function learnNames(m) {
    learnName(m.from, m.from_name);
    if (m.reply_to) learnName(m.reply_to.from, m.reply_to.from_name);
  }
  learnName(me, config.name);
  const COMMON_EMOJI = ["👍", "❤️", "😂", "🎉", "😮", "😢"];
  // The picker's search: emoji by their Unicode (CLDR) names, fully qualified as
  // the server wants them. A short list of the usual ones, not all of Unicode.
  const EMOJI_NAMES = [
    ["👍", "thumbs up yes ok +1"], ["👎", "thumbs down no -1"], ["❤️", "red heart love"],
    ["😂", "face with tears of joy laugh lol"], ["🎉", "party popper celebrate tada"],
    ["😮", "face with open mouth wow surprised"], ["😢", "crying face sad tear"],
    ["😀", "grinning face smile happy"], ["😃", "grinning face with big eyes smile"],
    ["😄", "grinning face with smiling eyes smile"], ["😁", "beaming face with smiling eyes grin"],
    ["😅", "grinning face with sweat relief"], ["🤣", "rolling on the floor laughing rofl"],
    ["🙂", "slightly smiling face"], ["😉", "winking face wink"], ["😊", "smiling face with smiling eyes blush"],
    ["😍", "smiling face with heart-eyes love"], ["🥰", "smiling face with hearts love"],
    ["😘", "face blowing a kiss"], ["😎", "smiling face with sunglasses cool"],
    ["🤔", "thinking face hmm"], ["🤨", "face with raised eyebrow doubt"], ["😐", "neutral face meh"],
    ["🙄", "face with rolling eyes"], ["😬", "grimacing face awkward"], ["😴", "sleeping face tired zzz"],
    ["😭", "loudly crying face sob"], ["😡", "enraged face angry pouting"], ["😱", "face screaming in fear shock"],
    ["🤯", "exploding head mind blown"], ["🥳", "partying face celebrate birthday"],
    ["🤗", "smiling face with open hands hug"], ["🤝", "handshake deal agree"],
    ["🙏", "folded hands please thanks pray"], ["👏", "clapping hands applause bravo"],
    ["🙌", "raising hands hooray"], ["💪", "flexed biceps strong"], ["👀", "eyes look watching"],
    ["👋", "waving hand hello bye"], ["👌", "ok hand fine"], ["✌️", "victory hand peace"],
    ["🤞", "crossed fingers luck hope"], ["🫡", "saluting face yes sir"], ["🔥", "fire hot lit"],
    ["✨", "sparkles shiny new"], ["⭐", "star favourite"], ["💯", "hundred points 100 perfect"],
    ["✅", "check mark button done yes"], ["❌", "cross mark no wrong"], ["⚠️", "warning careful"],
    ["❓", "red question mark"], ["❗", "red exclamation mark important"], ["💡", "light bulb idea"],
    ["🚀", "rocket launch ship fast"], ["🎯", "bullseye direct hit target"], ["🏆", "trophy win award"],
    ["🎂", "birthday cake"], ["🎁", "wrapped gift present"], ["☕", "hot beverage coffee tea"],
    ["🍕", "pizza food"], ["🍻", "clinking beer mugs cheers"], ["💔", "broken heart"],
    ["💙", "blue heart"], ["💚", "green heart"], ["💜", "purple heart"], ["🧡", "orange heart"],
    ["💛", "yellow heart"], ["🐛", "bug insect"], ["🤖", "robot bot"], ["👻", "ghost"],
    ["💩", "pile of poo"], ["🙈", "see-no-evil monkey oops"], ["🤷", "person shrugging shrug dunno"],
    ["🤦", "person facepalming facepalm"], ["💀", "skull dead"], ["☀️", "sun sunny"],
    ["🌈", "rainbow"], ["⚡", "high voltage lightning zap"], ["📌", "pushpin pin"],
    ["📎", "paperclip attach"], ["🔒", "locked lock"], ["⏰", "alarm clock time"],
  ];

  /** The emoji whose name holds every word typed (the common ones when nothing is typed). */
  function emojiMatching(query) {
    const words = query.trim().toLowerCase().split(/\s+/).filter(Boolean);
    if (!words.length) return COMMON_EMOJI.map((emoji) => EMOJI_NAMES.find((e) => e[0] === emoji));
    return EMOJI_NAMES.filter(([, name]) => words.every((word) => name.includes(word))).slice(0, 24);
  }

  function keyOf(address) {
    if (address.all) return "all";
    if (address.group !== undefined) return "group:" + address.group.toLowerCase();
    return "user:" + address.user;
  }

  /** The conversation a message belongs to, seen from this user. */
  function addressOfMessage(m) {
    if (m.to.all || m.to.group !== undefined) return m.to;
    return {user: m.from === me ? m.to.user : m.from};
  }

  function conversation(address) {
    const key = keyOf(address);
    let conv = state.conversations.get(key);
    if (!conv) {
      conv = {key, address, messages: new Map(), unread: 0, loaded: false, complete: false,
        loading: false, members: null, error: "", draft: "",
        // Protocol 1.1: the server's read position, the newest message, who typed, who read.
        readId: 0, last: null, typing: new Map(), seen: new Map(), unsent: [], notices: [],
        // Protocol 1.2: files attached in the composer, uploading or uploaded.
        attachments: []};
      state.conversations.set(key, conv);
    }
    return conv;
  }

  /** The URL fragment of a conversation: `#all`, `#group/NAME`, `#user/NAME`. */
  function hashOf(address) {
    if (address.all) return "#all";
    if (address.group !== undefined) return "#group/" + encodeURIComponent(address.group);
    return "#user/" + encodeURIComponent(address.user);
  }

  /** The conversation the URL names, or null (no fragment, or not one of ours). */
  function addressFromHash() {
    const match = /^#(all|group|user)(?:\/(.+))?$/.exec(location.hash);
    if (!match) return null;
    if (match[1] === "all") return match[2] === undefined ? {all: true} : null;
    let name;
    try { name = decodeURIComponent(match[2] || ""); } catch (e) { return null; }
    if (!name) return null;
    return match[1] === "group" ? {group: name} : {user: name};
  }

  function titleOf(conv) {
    if (conv.address.all) return "Everyone";
    if (conv.address.group !== undefined) return "# " + conv.address.group;
    return conv.address.user === me ? nameOf(me) + " (you)" : nameOf(conv.address.user);
  }

  // -- small DOM helpers -------------------------------------------------------

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (k === "className") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k === "dataset") Object.assign(node.dataset, v);
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v);
    }
    for (const child of children) if (child) node.append(child);
    return node;
  }

  function hue(name) {
    let h = 0;
    for (const ch of name) h = (h * 31 + ch.codePointAt(0)) % 360;
    return h;
  }

  /** A person's round initial: the first letter of their name, the colour of their username. */
  function avatar(user, className) {
    const initial = ([...nameOf(user).replace(/^guest-/, "")][0] || "?").toUpperCase();
    const node = el("span", {className: "avatar " + (className || ""), "aria-hidden": "true", text: initial});
    node.style.setProperty("--hue", hue(user));
    return node;
  }

  function badge(count) {
    return count ? el("span", {className: "badge", text: count > 99 ? "99+" : String(count),
      "aria-label": count + " unread"}) : null;
  }

  function plural(n, word) { return `${n} ${word}${n === 1 ? "" : "s"}`; }

  /** A size in bytes as people read it: 1.4 MB, 820 KB. */
  function humanSize(bytes) {
    if (bytes < 1024) return plural(bytes, "byte");
    const units = ["KB", "MB", "GB"];
    let value = bytes / 1024, unit = 0;
    while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
    return `${value < 10 ? value.toFixed(1) : Math.round(value)} ${units[unit]}`;
  }

  // Shown inline (the server serves only these inline, and thumbnails them).
  const INLINE_TYPES = new Set(["image/png", "image/jpeg", "image/gif", "image/webp"]);
  const isImage = (file) => INLINE_TYPES.has(file.type) && Boolean(file.thumb);

  /** What a message says in one line: its text, else "Photo" or its file's name. */
  function previewText(m) {
    const line = m.body.split("\n")[0];
    if (line.trim() || !(m.files && m.files.length)) return line;
    if (m.files.every(isImage)) return m.files.length === 1 ? "Photo" : `${m.files.length} photos`;
    return m.files.length === 1 ? m.files[0].name : `${m.files[0].name} and ${plural(m.files.length - 1, "more file")}`;
  }

  function showError(node, text) {
    node.textContent = text;
    node.hidden = !text;
  }

  // -- sidebar ---------------------------------------------------------------

  function conversationItem(address, label, extra) {
    const key = keyOf(address);
    const conv = state.conversations.get(key) || {key, unread: 0};
    const isOpen = state.openKey === key && paneVisible();
    const button = el("button", {
      type: "button", className: "conv-link" + (conv.unread ? " has-unread" : ""),
      dataset: {key: conv.key}, "aria-current": isOpen ? "page" : "false",
      onclick: () => openConversation(address),
    }, extra.icon, el("span", {className: "conv-text"},
      el("bdi", {className: "conv-name", text: label, title: extra.tooltip || ""}),
      typingOrPreview(conv)), extra.status || null,
      conv.mentions ? el("span", {className: "mention-badge", text: "@",
        title: plural(conv.mentions, "mention"), "aria-label": plural(conv.mentions, "unread mention")}) : null,
      badge(conv.unread));
    return el("li", {className: isOpen ? "active" : "", dataset: {key}}, button);
  }

  /** "bob is typing…" or the last message (sender and first line) for a sidebar entry. */
  function typingOrPreview(conv) {
    if (conv.typing && conv.typing.size) {
      return el("span", {className: "conv-preview typing-note", text: typingText(conv)});
    }
    const last = conv.last;
    if (!last) return null;
    const line = previewText(last);
    const date = new Date(last.ts);
    const when = date.toDateString() === new Date().toDateString()
      ? timeFormat.format(date) : shortDayFormat.format(date);
    return el("span", {className: "conv-preview"},
      el("time", {className: "conv-time", datetime: last.ts, text: when}),
      el("bdi", {text: (last.from === me ? "You" : nameOf(last.from)) + ": "}),
      el("bdi", {dir: "auto", text: line.length > 60 ? line.slice(0, 60) + "…" : line}));
  }

  function typingText(conv) {
    const names = [...conv.typing.keys()].map(nameOf);
    if (!names.length) return "";
    if (names.length === 1) return names[0] + " is typing…";
    return names.slice(0, -1).join(", ") + " and " + names[names.length - 1] + " are typing…";
  }

  /**
   * One list, newest activity first, as the server's `conversations` orders
   * it: everyone, one's groups, and the people one has talked with or who are
   * online now. Entries with no message yet follow, everyone then groups then
   * people, by name.
   */
  function renderSidebar() {
    const hashIcon = () => el("span", {className: "conv-icon", "aria-hidden": "true", text: "#"});
    const entries = [{address: {all: true}, rank: 0, name: "", item: () => conversationItem({all: true}, "Everyone",
      {icon: el("span", {className: "conv-icon everyone", "aria-hidden": "true", text: "✱"})})}];
    for (const g of state.groups) {
      entries.push({address: {group: g}, rank: 1, name: g, item: () => {
        const item = conversationItem({group: g}, g, {icon: state.privateGroups.has(g) ? lockIcon() : hashIcon()});
        item.dataset.group = g;
        return item;
      }});
    }
    const people = new Set([...state.online].filter((u) => u !== me));
    for (const conv of state.conversations.values()) {
      const talked = conv.messages.size > 0 || conv.last !== null || conv.key === state.openKey;
      if (conv.address.user !== undefined && conv.address.user !== me && talked) people.add(conv.address.user);
    }
    for (const u of people) entries.push({address: {user: u}, rank: 2, name: nameOf(u), item: () => personItem(u)});
    const activity = (entry) => {
      const conv = state.conversations.get(keyOf(entry.address));
      return conv && conv.last ? conv.last.id : 0;
    };
    entries.sort((a, b) => (activity(b) - activity(a)) || (a.rank - b.rank) || a.name.localeCompare(b.name));
    $("conversation-list").replaceChildren(...entries.map((entry) => entry.item()));
    const othersOnline = [...state.online].filter((u) => u !== me).length;
    $("online-count").textContent = othersOnline && client.connected ? othersOnline + " online" : "";
    $("people-empty").hidden = people.size > 0 || !$("people-found").hidden;

    const unread = [...state.conversations.values()].reduce((n, c) => n + c.unread, 0);
    document.title = (unread ? `(${unread}) ` : "") + "Chat";
    if (document.hidden && unread) document.title = `(${unread}) Chat`;
  }

  /** A private group's mark, in place of its `#`. */
  function lockIcon() {
    return el("span", {className: "conv-icon private", title: "Private group", role: "img", "aria-label": "Private group"});
  }

  function notePrivate(group, isPrivate) {
    if (typeof isPrivate !== "boolean") return;
    if (isPrivate) state.privateGroups.add(group);
    else state.privateGroups.delete(group);
  }

  function personItem(u) {
    const online = state.online.has(u);
    const icon = el("span", {className: "avatar-wrap"}, avatar(u, "small"),
      el("span", {className: "presence " + (online ? "on" : "off"), "aria-hidden": "true"}));
    const status = el("span", {className: "visually-hidden", text: online ? " (online)" : " (offline)"});
    const item = conversationItem({user: u}, nameOf(u), {icon, status, tooltip: "@" + u});
    item.classList.add(online ? "online" : "offline");
    item.dataset.user = u;
    return item;
  }

  // -- conversation pane -------------------------------------------------------

  const dayFormat = new Intl.DateTimeFormat(undefined, {weekday: "long", day: "numeric", month: "long"});
  const timeFormat = new Intl.DateTimeFormat(undefined, {hour: "2-digit", minute: "2-digit"});
  const fullFormat = new Intl.DateTimeFormat(undefined, {dateStyle: "full", timeStyle: "short"});
  const shortDayFormat = new Intl.DateTimeFormat(undefined, {day: "numeric", month: "short"});

  function dayLabel(date) {
    const today = new Date();
    const yesterday = new Date(today.getFullYear(), today.getMonth(), today.getDate() - 1);
    if (date.toDateString() === today.toDateString()) return "Today";
    if (date.toDateString() === yesterday.toDateString()) return "Yesterday";
    return dayFormat.format(date);
  }

  /** Text nodes, with http(s) links as anchors; nothing else becomes markup. */
  /** Text nodes with each `@name` the server resolved as a mention marked (one's own more strongly). */
  function mentionified(nodes, names) {
    if (!names || !names.length) return nodes;
    const longestFirst = [...names].sort((a, b) => b.length - a.length);
    const escaped = longestFirst.map((n) => n.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"));
    const pattern = new RegExp("@(" + escaped.join("|") + ")", "g");
    const out = [];
    for (const node of nodes) {
      if (node.nodeType !== Node.TEXT_NODE) { out.push(node); continue; }
      const text = node.textContent;
      let rest = 0;
      for (const match of text.matchAll(pattern)) {
        out.push(document.createTextNode(text.slice(rest, match.index)));
        out.push(el("span", {className: "mention" + (match[1] === me ? " me" : ""), text: match[0],
          title: nameOf(match[1])}));
        rest = match.index + match[0].length;
      }
      out.push(document.createTextNode(text.slice(rest)));
    }
    return out;
  }

  function linkified(text) {
    const parts = [];
    let rest = 0;
    for (const match of text.matchAll(/\bhttps?:\/\/[^\s<>"']+[^\s<>"'.,;:!?)\]]/gi)) {
      let url;
      try { url = new URL(match[0]); } catch (e) { continue; }
      if (url.protocol !== "http:" && url.protocol !== "https:") continue;
      parts.push(document.createTextNode(text.slice(rest, match.index)));
      parts.push(el("a", {href: url.href, target: "_blank", rel: "noopener noreferrer", text: match[0]}));
      rest = match.index + match[0].length;
    }
    parts.push(document.createTextNode(text.slice(rest)));
    return parts;
  }

  function messageItem(m, previous) {
    const date = new Date(m.ts);
    const own = m.from === me;
    const continued = previous && previous.from === m.from &&
      date - new Date(previous.ts) < 5 * 60 * 1000 &&
      new Date(previous.ts).toDateString() === date.toDateString();
    const item = el("li", {className: "message" + (own ? " own" : "") + (continued ? " continued" : ""),
      dataset: {id: String(m.id), from: m.from}});
    if (!continued) {
      item.append(avatar(m.from, "message-avatar"));
      item.append(el("div", {className: "meta"},
        el("bdi", {className: "from", text: own ? "You" : nameOf(m.from), title: "@" + m.from}),
        el("time", {datetime: m.ts, title: fullFormat.format(date), text: timeFormat.format(date)})));
    } else {
      item.append(el("time", {className: "side-time", datetime: m.ts, title: fullFormat.format(date),
        text: timeFormat.format(date)}));
    }
    // dir=auto isolates the text: a right-to-left override in it cannot
    // reorder the name, time or messages around it.
    if (m.reply_to) {
      item.append(el("button", {type: "button", className: "reply-quote", dir: "auto",
        title: "Show the message this answers", onclick: () => jumpTo(m.reply_to.id)},
        el("bdi", {className: "reply-from", text: nameOf(m.reply_to.from), title: "@" + m.reply_to.from}),
        el("span", {text: m.reply_to.excerpt || "This message was deleted"})));
    }
    if (m.deleted) {
      item.classList.add("deleted");
      item.append(el("div", {className: "body", text: "This message was deleted"}));
      return item;
    }
    if (state.editingId === m.id) {
      item.append(editor(m));
    } else if (m.body || m.edited_at) {
      item.append(el("div", {className: "body", dir: "auto"}, ...mentionified(linkified(m.body), m.mentions),
        m.edited_at ? el("span", {className: "edited", title: fullFormat.format(new Date(m.edited_at)),
          text: " (edited)"}) : null));
    }
    if (m.files && m.files.length) item.append(filesNode(m));
    if (m.reactions && m.reactions.length) {
      item.append(el("div", {className: "reactions"}, ...m.reactions.map((r) => {
        const mine = r.users.includes(me);
        return el("button", {type: "button", className: "reaction" + (mine ? " mine" : ""),
          title: r.users.map(nameOf).join(", "), "aria-pressed": String(mine), text: `${r.emoji} ${r.count}`,
          onclick: () => react(m, r.emoji, !mine)});
      })));
    }
    item.append(messageMenu(m, own));
    // The menu and picker stay open without the pointer on them (a phone has none).
    if (state.pickerFor === m.id || state.menuFor === m.id) item.classList.add("menu-open");
    // A long press (a phone's context menu, or a touch held half a second) opens the menu.
    item.addEventListener("contextmenu", (ev) => { ev.preventDefault(); openMenu(m.id); });
    let pressTimer = null;
    item.addEventListener("touchstart", () => {
      pressTimer = setTimeout(() => openMenu(m.id), 500);
    }, {passive: true});
    for (const end of ["touchend", "touchmove", "touchcancel"]) {
      item.addEventListener(end, () => clearTimeout(pressTimer), {passive: true});
    }
    return item;
  }

  // -- protocol 1.2: files in messages, and the image viewer -----------------

  // A message's files drawn once: the list is redrawn often, and images would load again.
  const drawnFiles = new Map();
  function filesNode(m) {
    const key = m.files.map((f) => f.upload).join(" ");
    const drawn = drawnFiles.get(m.id);
    if (drawn && drawn.key === key) return drawn.node;
    const node = filesOf(m.files);
    drawnFiles.set(m.id, {key, node});
    return node;
  }

  /** Images as thumbnails that open the viewer; other files as chips with a download link. */
  function filesOf(files) {
    const list = el("div", {className: "files"});
    for (const file of files) {
      if (isImage(file)) {
        const img = el("img", {src: file.thumb, alt: file.name, loading: "lazy", decoding: "async"});
        // The thumbnail's own proportions, so the list does not jump as images arrive.
        if (file.width && file.height) {
          const scale = Math.min(1, 480 / Math.max(file.width, file.height));
          img.width = Math.max(1, Math.round(file.width * scale));
          img.height = Math.max(1, Math.round(file.height * scale));
        }
        list.append(el("button", {type: "button", className: "file-thumb", title: file.name,
          "aria-label": "Open " + file.name, onclick: (ev) => openViewer(file, ev.currentTarget)}, img));
        continue;
      }
      const dot = file.name.lastIndexOf(".");
      const ext = dot > 0 && file.name.length - dot <= 5 ? file.name.slice(dot + 1).toUpperCase() : "FILE";
      list.append(el("div", {className: "file-chip"},
        el("span", {className: "file-icon", "aria-hidden": "true", text: ext}),
        el("span", {className: "file-text"},
          el("bdi", {className: "file-name", dir: "auto", text: file.name, title: file.name}),
          el("span", {className: "file-size", text: humanSize(file.size)})),
        el("a", {className: "file-download", href: file.url, download: file.name,
          "aria-label": "Download " + file.name, text: "Download"})));
    }
    return list;
  }

  let viewerReturn = null;
  function openViewer(file, opener) {
    viewerReturn = opener || null;
    const viewer = $("viewer");
    $("viewer-image").src = file.url;
    $("viewer-image").alt = file.name;
    $("viewer-name").textContent = file.name;
    $("viewer-download").href = file.url;
    $("viewer-download").setAttribute("download", file.name);
    viewer.hidden = false;
    $("viewer-close").focus();
  }
  function closeViewer() {
    const viewer = $("viewer");
    if (viewer.hidden) return;
    viewer.hidden = true;
    $("viewer-image").removeAttribute("src");
    if (viewerReturn && viewerReturn.isConnected) viewerReturn.focus();
    viewerReturn = null;
  }
  $("viewer-close").addEventListener("click", closeViewer);
  $("viewer").addEventListener("click", (ev) => { if (ev.target === $("viewer")) closeViewer(); });
  document.addEventListener("keydown", (ev) => {
    if (ev.key === "Escape" && !$("viewer").hidden) { ev.preventDefault(); closeViewer(); }
  });

  // -- protocol 1.2: the message menu (reply, react, edit, delete) -----------

  function openMenu(id) {
    state.menuFor = state.menuFor === id ? null : id;
    renderMessages();
  }

  function messageMenu(m, own) {
    const menu = el("div", {className: "message-menu"},
      el("button", {type: "button", text: "Reply", onclick: () => startReply(m)}),
      el("button", {type: "button", text: "React", "aria-expanded": String(state.pickerFor === m.id),
        onclick: () => {
          state.pickerFor = state.pickerFor === m.id ? null : m.id;
          state.pickerQuery = "";
          state.pickerOpened = state.pickerFor !== null;
          renderMessages();
        }}));
    if (own) {
      // Edit only while the server would take it (hello's `edit_window`, 0: always).
      if (editable(m)) {
        menu.append(el("button", {type: "button", text: "Edit",
          onclick: () => { state.editingId = m.id; renderMessages(); }}));
      }
      menu.append(el("button", {type: "button", text: "Delete", onclick: () => removeMessage(m)}));
    }
    if (state.pickerFor === m.id) menu.append(emojiPicker(m));
    return menu;
  }

  function editable(m) {
    const seconds = state.editWindow;
    return !seconds || Date.now() - Date.parse(m.ts) < seconds * 1000;
  }

  /** The common emoji, and a search over their names; Enter takes the first found. */
  function emojiPicker(m) {
    // Drawn again while someone types in its search (a message came): the search keeps the focus.
    const searching = document.activeElement && document.activeElement.classList.contains("emoji-search");
    const search = el("input", {type: "search", className: "emoji-search", placeholder: "Search emoji",
      "aria-label": "Search emoji", autocomplete: "off"});
    search.value = state.pickerQuery;
    const choices = el("div", {className: "emoji-choices"});
    const pick = (emoji) => { state.pickerFor = null; react(m, emoji, true); renderMessages(); };
    const show = () => {
      const found = emojiMatching(search.value);
      choices.replaceChildren(...found.map(([emoji, name]) => el("button", {type: "button",
        className: "emoji", text: emoji, title: name.split(" ").slice(0, 4).join(" "),
        onclick: () => pick(emoji)})));
      if (!found.length) choices.append(el("span", {className: "emoji-none", text: "No emoji found"}));
      return found;
    };
    search.addEventListener("input", () => { state.pickerQuery = search.value; show(); });
    search.addEventListener("keydown", (ev) => {
      if (ev.key === "Escape") { ev.preventDefault(); state.pickerFor = null; renderMessages(); }
      if (ev.key === "Enter") {
        ev.preventDefault();
        const found = emojiMatching(search.value);
        if (found.length) pick(found[0][0]);
      }
    });
    show();
    const opened = state.pickerOpened && window.matchMedia("(min-width: 721px)").matches;
    state.pickerOpened = false;
    if (searching || opened) setTimeout(() => search.focus(), 0);
    return el("div", {className: "emoji-picker", role: "group", "aria-label": "React with"}, search, choices);
  }

  function editor(m) {
    const box = el("textarea", {className: "edit-box", rows: "2", "aria-label": "Edit message"});
    box.value = m.body;
    box.addEventListener("keydown", (ev) => {
      if (ev.key === "Escape") { ev.preventDefault(); state.editingId = null; renderMessages(); }
      if (ev.key === "Enter" && !ev.shiftKey) { ev.preventDefault(); saveEdit(m, box.value); }
    });
    setTimeout(() => box.focus(), 0);
    return box;
  }

  async function saveEdit(m, body) {
    state.editingId = null;
    if (body.trim() && body !== m.body) {
      try { await client.request({type: "edit", id: m.id, body}); }
      catch (error) { showError($("send-error"), describeError(error)); }
    }
    renderMessages();
  }

  async function removeMessage(m) {
    if (!window.confirm("Delete this message for everyone?")) return;
    try { await client.request({type: "delete", id: m.id}); }
    catch (error) { showError($("send-error"), describeError(error)); }
  }

  async function react(m, emoji, on) {
    try { await client.request({type: on ? "react" : "unreact", id: m.id, emoji}); }
    catch (error) { showError($("send-error"), describeError(error)); }
  }

  function startReply(m) {
    state.replyTo = {id: m.id, from: m.from, excerpt: previewText(m).slice(0, 100), key: state.openKey};
    renderReplyBar();
    $("body").focus();
  }

  function renderReplyBar() {
    let bar = $("reply-bar");
    if (!bar) {
      bar = el("div", {id: "reply-bar", className: "reply-bar"});
      $("composer").before(bar);
    }
    const reply = state.replyTo && state.replyTo.key === state.openKey ? state.replyTo : null;
    bar.hidden = !reply;
    bar.replaceChildren();
    if (reply) {
      bar.append(el("span", {className: "reply-label", text: "Replying to "}),
        el("bdi", {className: "reply-from", text: nameOf(reply.from), title: "@" + reply.from}),
        el("span", {className: "reply-excerpt", dir: "auto", text: reply.excerpt}),
        el("button", {type: "button", className: "ghost", text: "Cancel",
          onclick: () => { state.replyTo = null; renderReplyBar(); }}));
    }
  }

  /** Scroll to a message, loading older history until it is there (or there is no more). */
  async function jumpTo(id) {
    const conv = state.conversations.get(state.openKey);
    if (!conv) return;
    for (let page = 0; page < 50 && !conv.messages.has(id) && !conv.complete; page += 1) {
      const before = conv.messages.size;
      await loadHistory(conv);
      if (conv.messages.size === before && !conv.complete) break;
    }
    const target = $("message-list").querySelector(`li.message[data-id="${id}"]`);
    if (!target) return;
    target.scrollIntoView({block: "center"});
    target.classList.add("jumped");
    setTimeout(() => target.classList.remove("jumped"), 2000);
  }

  // The jump is offered only while the first unread message is scrolled out of sight.
  const dividerInView = new IntersectionObserver((entries) => {
    for (const entry of entries) $("jump-unread").hidden = entry.isIntersecting;
  });

  function renderMessages() {
    const conv = state.conversations.get(state.openKey);
    const box = $("messages");
    const fromBottom = box.scrollHeight - box.scrollTop;
    const atBottom = fromBottom - box.clientHeight < 60;
    const messages = [...conv.messages.values()].sort((a, b) => a.id - b.id);
    // A landing that stopped short of the last read message: the divider stays
    // above the oldest one loaded now, wherever older pages come in later.
    if (conv.landing && dividerReached(conv) && messages.length && messages[0].id > conv.dividerAt + 1
        && !conv.complete) conv.dividerAt = messages[0].id - 1;
    const items = [];
    let previous = null;
    const divider = conv.dividerAt === undefined ? null : conv.dividerAt;
    let dividerShown = false;
    const notices = [...conv.notices];
    for (const m of messages) {
      const day = new Date(m.ts).toDateString();
      if (!previous || new Date(previous.ts).toDateString() !== day) {
        items.push(el("li", {className: "day", role: "separator"}, el("span", {text: dayLabel(new Date(m.ts))})));
        previous = null;
      }
      if (divider !== null && !dividerShown && m.id > divider && m.from !== me) {
        dividerShown = true;
        items.push(el("li", {className: "new-divider", id: "new-divider", role: "separator"},
          el("span", {text: "New messages"})));
        previous = null;
      }
      // Joins and leaves go after the last message that came before them.
      while (notices.length && notices[0].after < m.id) { items.push(noticeItem(notices.shift())); previous = null; }
      items.push(messageItem(m, previous));
      previous = m;
    }
    for (const notice of notices) items.push(noticeItem(notice));
    const seen = seenLine(conv, messages);
    if (seen) {
      const under = items.findIndex((item) => item.dataset && item.dataset.id === String(seen.under));
      items.splice(under + 1, 0, seen.item);
    }
    for (const pending of conv.unsent) items.push(unsentItem(conv, pending));
    // An older stretch is shown (a search result): the way back to the newest.
    if (conv.newer && messages.length) {
      items.push(el("li", {className: "notice"}, el("button", {type: "button", className: "secondary small newer-gap",
        id: "show-newest", text: "Show the newest messages", onclick: () => showNewest(conv)})));
    }
    $("message-list").replaceChildren(...items);
    $("jump-unread").hidden = !dividerShown;
    dividerInView.disconnect();
    if (dividerShown) dividerInView.observe($("new-divider"));
    $("empty-conversation").hidden = !(conv.loaded && messages.length === 0 && !conv.unsent.length && !conv.error);
    let status = "";
    if (conv.error) status = conv.error;
    else if (conv.loading) status = "Loading earlier messages…";
    else if (conv.complete && messages.length) status = "This is the beginning of the conversation.";
    $("history-status").textContent = status;
    $("history-status").className = "history-status" + (conv.error ? " error" : "");
    box.scrollTop = atBottom ? box.scrollHeight : box.scrollHeight - fromBottom;
    if (conv.landing && dividerShown && dividerReached(conv)) {
      conv.landing = false;
      const divider = $("new-divider");
      box.scrollTop += divider.getBoundingClientRect().top - box.getBoundingClientRect().top - 8;
    }
  }

  /**
   * Whether the loaded history reaches back to the divider (the last read
   * message or the start), or as far as a landing loads: LANDING_PAGES pages,
   * so a newcomer to a long conversation does not load all of it (the
   * divider then heads what is loaded, and scrolling up loads the rest).
   */
  function dividerReached(conv) {
    if (conv.complete || (conv.landingPages >= LANDING_PAGES && !conv.loading)) return true;
    for (const id of conv.messages.keys()) if (id <= conv.dividerAt) return true;
    return false;
  }

  /** Load older pages until the first unread message is loaded (each page asks for the next). */
  function loadUntilDivider(conv) {
    if (!conv.landing || dividerReached(conv) || conv.loading || conv.error) return;
    conv.landingPages = (conv.landingPages || 0) + 1;
    loadHistory(conv);
  }

  /**
   * The receipt, under one's own messages only: "Seen" under one's last direct
   * message the other person has read, "Seen by N" (names in its tooltip)
   * under one's last group message that anyone else has read. Returns the
   * line and the id of the message it goes under, or null.
   */
  function seenLine(conv, messages) {
    if (conv.address.all || conv.address.user === me) return null;
    const others = [...conv.seen.entries()].filter(([user]) => user !== me);
    const mine = messages.filter((m) => m.from === me);
    for (let i = mine.length - 1; i >= 0; i--) {
      const readers = others.filter(([, id]) => id >= mine[i].id).map(([user]) => user);
      if (!readers.length) continue;
      const group = conv.address.group !== undefined;
      const item = el("li", {className: "seen", text: group ? `Seen by ${readers.length}` : "Seen"});
      if (group) item.title = "Seen by " + readers.map(nameOf).sort().join(", ");
      return {item, under: mine[i].id};
    }
    return null;
  }

  function noticeItem(notice) {
    const who = notice.user === me ? "You" : nameOf(notice.user);
    // 1.2: a change someone else made ("alice added bob", "alice made bob an admin").
    const whom = notice.user === me ? "you" : nameOf(notice.user);
    const by = notice.by === me ? "You" : nameOf(notice.by);
    const text = notice.role ? `${by} made ${whom} ${notice.role === "member" ? "a member" : "an " + notice.role}`
      : notice.by ? `${by} ${notice.joined ? "added" : "removed"} ${whom}`
        : `${who} ${notice.joined ? "joined" : "left"}`;
    return el("li", {className: "notice", role: "status"},
      el("span", {text, title: "@" + notice.user}),
      el("time", {datetime: notice.ts.toISOString(), text: " · " + timeFormat.format(notice.ts)}));
  }

  function unsentItem(conv, pending) {
    const retry = el("button", {type: "button", className: "link", text: "Retry",
      onclick: () => { conv.unsent = conv.unsent.filter((p) => p !== pending); renderMessages(); sendBody(conv, pending.body, pending.cid, undefined, pending.files); }});
    const discard = el("button", {type: "button", className: "link", text: "Discard",
      onclick: () => { conv.unsent = conv.unsent.filter((p) => p !== pending); renderMessages(); }});
    return el("li", {className: "message own unsent"},
      pending.body ? el("div", {className: "body", dir: "auto", text: pending.body}) : null,
      pending.files && pending.files.length ? filesOf(pending.files) : null,
      el("p", {className: "unsent-note"}, el("span", {text: "Not sent: " + pending.reason + " "}), retry, discard));
  }

  function renderMembers() {
    const conv = state.conversations.get(state.openKey);
    const isGroup = conv && conv.address.group !== undefined;
    $("members-toggle").hidden = !isGroup;
    if (!isGroup || !$("leave-confirm").hidden) $("leave-button").hidden = true;
    else $("leave-button").hidden = false;
    if (!isGroup) $("leave-confirm").hidden = true;
    $("members-panel").hidden = !(isGroup && state.membersOpen);
    $("members-toggle").setAttribute("aria-expanded", String(isGroup && state.membersOpen));
    if (!isGroup) return;
    const members = conv.members || [];
    const sorted = [...members].sort((a, b) => (b.online - a.online) || nameOf(a.user).localeCompare(nameOf(b.user)));
    // Protocol 1.2: what one's role lets one do here (the server checks it again).
    const mine = (members.find((m) => m.user === me) || {}).role;
    const manages = mine === "owner" || mine === "admin";
    $("invite-form").hidden = !members.length || !(manages || !state.privateGroups.has(conv.address.group));
    $("member-list").replaceChildren(...sorted.map((m) => {
      const online = m.user === me || state.online.has(m.user);
      const removable = m.user !== me && (mine === "owner" || (mine === "admin" && m.role === "member"));
      return el("li", {className: online ? "online" : "offline", dataset: {user: m.user, role: m.role || "member"}},
        el("span", {className: "avatar-wrap"}, avatar(m.user, "small"),
          el("span", {className: "presence " + (online ? "on" : "off"), "aria-hidden": "true"})),
        el("span", {className: "member-name"}, el("bdi", {className: "member-user", text: nameOf(m.user), title: "@" + m.user}),
          m.user === me ? el("span", {className: "member-you", text: "(you)"}) : null),
        m.role && m.role !== "member" ? el("span", {className: "role-badge " + m.role, text: m.role}) : null,
        // An owner's or admin's controls, on a line of their own under the name.
        (mine === "owner" && m.user !== me) || removable ? el("span", {className: "member-controls"},
          mine === "owner" && m.user !== me ? roleSelect(conv, m) : null,
          removable ? el("button", {type: "button", className: "ghost danger small member-remove", text: "Remove",
            "aria-label": `Remove ${m.user} from the group`, onclick: () => removeMember(conv, m.user)}) : null) : null,
        el("span", {className: "visually-hidden", text: online ? " online" : " offline"}));
    }));
    const onlineCount = sorted.filter((m) => m.user === me || state.online.has(m.user)).length;
    const known = client.connected; // who is online is unknown while this page is offline
    $("member-count").textContent = !members.length ? "" : known ? `${onlineCount}/${members.length} online` : "";
    $("conv-subtitle").textContent = !members.length ? ""
      : plural(members.length, "member") + (known ? `, ${onlineCount} online` : "");
  }

  /** An owner's choice of another member's role (protocol 1.2 `role`). */
  function roleSelect(conv, m) {
    const select = el("select", {className: "role-select", "aria-label": `Role of ${m.user}`,
      onchange: async () => {
        showError($("member-error"), "");
        try {
          // The reply is also handed to the `role` listener, like the event.
          await client.request({type: "role", group: conv.address.group, user: m.user, role: select.value});
        } catch (error) {
          select.value = m.role;
          showError($("member-error"), describeError(error));
        }
      }}, ...["owner", "admin", "member"].map((role) => el("option", {value: role, text: role})));
    select.value = m.role || "member";
    return select;
  }

  async function removeMember(conv, user) {
    showError($("member-error"), "");
    try {
      // The reply (`left` with `by`) is handed to the `left` listener too.
      await client.request({type: "remove", group: conv.address.group, user});
    } catch (error) {
      showError($("member-error"), describeError(error));
    }
  }

  function renderHeader() {
    const conv = state.conversations.get(state.openKey);
    $("conv-title").textContent = titleOf(conv);
    $("conv-title").title = conv.address.user !== undefined ? "@" + conv.address.user : "";
    let subtitle = "";
    let placeholder = "Message everyone";
    if (conv.address.all) subtitle = "Messages here reach everyone";
    else if (conv.address.user !== undefined) {
      if (conv.address.user === me) subtitle = "Notes to self";
      else if (client.connected) subtitle = state.online.has(conv.address.user) ? "Online" : "Offline";
      placeholder = "Message " + nameOf(conv.address.user);
    } else placeholder = "Message # " + conv.address.group;
    $("conv-lock").hidden = !(conv.address.group !== undefined && state.privateGroups.has(conv.address.group));
    $("conv-subtitle").textContent = subtitle;
    $("body").placeholder = placeholder;
  }

  function renderConversation() {
    renderHeader();
    renderMembers();
    renderMessages();
    renderReplyBar();
    renderAttachments();
  }

  async function loadHistory(conv) {
    // An older stretch on its way (a search result) decides where pages go on from.
    if (conv.loading || conv.complete || !client.connected || (conv.newer && !conv.messages.size)) return;
    conv.loading = true;
    if (state.openKey === conv.key) renderMessages();
    const command = {type: "history", of: conv.address, limit: PAGE_SIZE};
    const ids = [...conv.messages.keys()];
    if (conv.loaded && ids.length) command.before = Math.min(...ids);
    try {
      const reply = await client.request(command);
      for (const m of reply.messages) { learnNames(m); conv.messages.set(m.id, m); }
      if (!reply.more) conv.complete = true;
      conv.loaded = true;
      conv.error = "";
      conv.historyFailures = 0;
    } catch (error) {
      historyFailed(conv, error);
    } finally {
      conv.loading = false;
    }
    if (state.openKey === conv.key) {
      renderMessages();
      if (conv.landing && !dividerReached(conv)) loadUntilDivider(conv);
      else fillViewport(conv);
    }
  }

  /**
   * A history page that did not load is tried again on its own, with growing
   * pauses (1, 2, 4 … 30 s), and the conversation says so meanwhile. Offline,
   * the next `hello` tries again instead.
   */
  function historyFailed(conv, error) {
    clearTimeout(conv.historyTimer);
    if (!client.connected) {
      conv.error = "Earlier messages will load when the connection is back.";
      return;
    }
    conv.historyFailures = (conv.historyFailures || 0) + 1;
    const seconds = Math.min(30, 2 ** (conv.historyFailures - 1));
    const reason = error.code === "rate_limited" ? "the server asked to slow down." : describeError(error);
    conv.error = `Could not load messages: ${reason} Trying again in ${seconds} s…`;
    conv.historyTimer = setTimeout(() => {
      if (!client.connected) return;
      conv.error = "";
      loadHistory(conv);
    }, seconds * 1000);
  }

  /** Load older pages until the list can scroll (so scrolling up can ask for more). */
  function fillViewport(conv) {
    const box = $("messages");
    if (!conv.complete && !conv.error && box.scrollHeight <= box.clientHeight) loadHistory(conv);
  }

  /**
   * A read refused for a while (the budget spent by reloads in a row, or the
   * database busy) is asked again, with growing pauses (2, 4 … 30 s) while the
   * connection lasts; the next `hello` asks anyway.
   */
  const retries = new Map();
  function retryLater(name, error, again) {
    if (!["rate_limited", "unavailable"].includes(error.code) || !client.connected) return false;
    const failures = (retries.get(name)?.failures || 0) + 1;
    clearTimeout(retries.get(name)?.timer);
    const timer = setTimeout(() => { if (client.connected) again(); }, Math.min(30, 2 ** failures) * 1000);
    retries.set(name, {failures, timer});
    return true;
  }
  function retried(name) {
    clearTimeout(retries.get(name)?.timer);
    retries.delete(name);
  }

  async function loadMembers(conv) {
    if (conv.address.group === undefined || !client.connected) return;
    try {
      const reply = await client.request({type: "members", group: conv.address.group});
      retried("members " + conv.key);
      conv.members = reply.members;
      for (const m of reply.members) learnName(m.user, m.name);
      // Where each member has read to: the receipts after a reload.
      for (const m of reply.members) noteSeen(conv, m.user, m.read_id);
    } catch (error) {
      if (!retryLater("members " + conv.key, error, () => loadMembers(conv))) conv.error = describeError(error);
    }
    if (state.openKey === conv.key) { renderMembers(); renderMessages(); }
  }

  /**
   * Show a conversation. Its address goes in the URL (`#user/bob`,
   * `#group/Design%20Team`, `#all`): `history` "push" (a click: the back
   * button returns), "replace" (opened by the page itself) or "none" (the
   * URL already says it: a link, a reload, the back button).
   */
  function openConversation(address, history = "push") {
    const conv = conversation(address);
    const previous = state.conversations.get(state.openKey);
    if (previous) previous.draft = $("body").value;
    $("leave-confirm").hidden = true;
    state.openKey = conv.key;
    if (history !== "none" && location.hash !== hashOf(conv.address)) {
      if (history === "push") window.history.pushState(null, "", hashOf(conv.address));
      else window.history.replaceState(null, "", hashOf(conv.address));
    }
    // Unread ones wait under a "New messages" divider, the view opening there.
    // Before the server's list has come (a reload) nobody knows yet: it decides.
    conv.dividerAt = conv.unread ? conv.readId : null;
    conv.landing = conv.unread > 0;
    conv.landingPages = 0;
    conv.awaitingList = !state.listed;
    conv.unread = 0;
    conv.mentions = 0;
    markRead(conv);
    $("body").value = conv.draft;
    showError($("send-error"), "");
    $("app").dataset.view = "conversation";
    autosize();
    $("app").dataset.kind = conv.address.all ? "all" : conv.address.group !== undefined ? "group" : "user";
    $("message-list").replaceChildren();
    renderSidebar();
    renderConversation();
    $("messages").scrollTop = $("messages").scrollHeight;
    if (!conv.loaded) loadHistory(conv);
    else if (conv.landing) loadUntilDivider(conv);
    loadMembers(conv);
    if (window.matchMedia("(min-width: 721px)").matches) $("body").focus();
  }

  /** Tell the server how far this conversation is read (every tab and device follows). */
  function markRead(conv) {
    const ids = [...conv.messages.keys()];
    const newest = Math.max(conv.last ? conv.last.id : 0, ids.length ? Math.max(...ids) : 0);
    if (!newest || newest <= conv.readId || !client.connected) return;
    conv.readId = newest;
    client.request({type: "read", of: conv.address, id: newest}).catch(() => {});
  }

  /** Record that `user` has read `conv` up to `id` (positions only move forward). */
  function noteSeen(conv, user, id) {
    if (typeof id !== "number" || user === me) return;
    conv.seen.set(user, Math.max(conv.seen.get(user) || 0, id));
  }

  /** Conversations, unread counts and read positions from the server (after every hello). */
  async function loadConversations() {
    let before = null;
    for (let page = 0; page < 10; page++) {
      const command = {type: "conversations", limit: 100};
      if (before) command.before = before;
      let reply;
      try {
        reply = await client.request(command);
      } catch (error) {
        retryLater("conversations", error, loadConversations);
        return;
      }
      retried("conversations");
      for (const item of reply.items) {
        const conv = conversation(item.of);
        conv.address = item.of;
        conv.last = item.last;
        if (item.last) learnNames(item.last);
        if (item.of.group !== undefined) notePrivate(item.of.group, item.private);
        if (conv.address.user !== undefined) noteSeen(conv, conv.address.user, item.their_read_id);
        // Opened before the list came (a reload): its unread ones get the divider now.
        if (conv.key === state.openKey && conv.awaitingList && item.unread) {
          conv.dividerAt = item.read_id;
          conv.landing = true;
          conv.landingPages = 0;
        }
        conv.awaitingList = false;
        conv.readId = Math.max(conv.readId, item.read_id);
        conv.unread = isShowing(conv) ? 0 : item.unread;
        conv.mentions = isShowing(conv) ? 0 : (item.mentions || 0);
        if (item.last) conv.messages.size && conv.messages.set(item.last.id, item.last);
      }
      if (!reply.more) break;
      before = reply.next;
    }
    state.listed = true;
    for (const conv of state.conversations.values()) conv.awaitingList = false;
    const open = state.conversations.get(state.openKey);
    if (open && isShowing(open)) markRead(open);
    if (open) { renderMessages(); if (open.landing) loadUntilDivider(open); }
    renderSidebar();
  }

  /** Whether the conversation pane is on screen (on a phone the list may cover it). */
  function paneVisible() { return $("conversation").offsetParent !== null; }
  function isShowing(conv) { return state.openKey === conv.key && paneVisible(); }

  // -- events from the server ------------------------------------------------

  // While offline: "retrying in N s", counting down each second to the client's retry.
  let countdown = null;
  function renderConnectionLabel(s) {
    const labels = {connecting: "Connecting…", reconnecting: "Reconnecting…", online: "Connected",
      "logged-out": "Logged out"};
    let label = labels[s.state] || "Offline";
    if (s.state === "offline" && s.retryAt) {
      const seconds = Math.ceil((s.retryAt - Date.now()) / 1000);
      label = seconds > 0 ? `Offline · retrying in ${seconds} s` : "Offline · retrying…";
    }
    $("connection").querySelector(".label").textContent = label;
  }

  client.on("status", (s) => {
    const box = $("connection");
    const wasOnline = box.dataset.state === "online";
    box.dataset.state = s.state;
    $("app").dataset.connection = s.state; // presence is unknown while offline
    clearInterval(countdown);
    renderConnectionLabel(s);
    if (s.state === "offline" && s.retryAt) countdown = setInterval(() => renderConnectionLabel(s), 1000);
    $("retry").hidden = s.state !== "offline";
    if (s.state === "logged-out") location.assign(config.loginUrl + "?next=/");
    // Who is online is unknown while this page is not: the header stops saying so.
    if (wasOnline !== (s.state === "online") && state.openKey) { renderHeader(); renderMembers(); renderSidebar(); }
  });

  const isPhone = () => window.matchMedia("(max-width: 720px)").matches;

  /** The conversation the URL names, if this user may open it; else everyone. */
  function openFromUrl() {
    const wanted = addressFromHash();
    const group = wanted && wanted.group !== undefined
      ? state.groups.find((g) => g.toLowerCase() === wanted.group.toLowerCase()) : null;
    if (wanted && wanted.group !== undefined && !group) {
      openConversation({all: true}, "replace");
    } else if (wanted) {
      openConversation(group ? {group} : wanted, group && group !== wanted.group ? "replace" : "none");
      return;
    } else {
      openConversation({all: true}, "none");
    }
    // On a phone, no conversation named: the list.
    if (isPhone()) $("app").dataset.view = "list";
  }

  // The back and forward buttons, and links to another conversation on this page.
  window.addEventListener("popstate", () => {
    if (!client.greeted) return;
    const wanted = addressFromHash();
    if (!wanted && isPhone()) { $("app").dataset.view = "list"; renderSidebar(); return; }
    if (!wanted || keyOf(wanted) !== state.openKey || $("app").dataset.view !== "conversation") openFromUrl();
  });

  client.on("hello", (hello) => {
    learnName(me, hello.name);
    if (typeof hello.edit_window === "number") state.editWindow = hello.edit_window;
    renderMe();
    state.online = new Set(hello.online);
    state.groups = [...hello.groups];
    if (!hello.resumed) {
      openFromUrl();
    } else {
      // Reconnected: whatever failed while offline is worth another try.
      const conv = state.conversations.get(state.openKey);
      if (conv && conv.address.group !== undefined && !state.groups.includes(conv.address.group)) {
        openConversation({all: true}, "replace");
      } else if (conv) {
        const failed = conv.error !== "";
        conv.error = "";
        clearTimeout(conv.historyTimer);
        conv.historyFailures = 0;
        if (!conv.loaded || failed) loadHistory(conv);
        loadMembers(conv);
      }
    }
    showError($("send-error"), "");
    showError($("join-error"), "");
    loadConversations();
    renderSidebar();
    renderHeader();
  });

  client.on("message", (m) => {
    learnNames(m);
    const conv = conversation(addressOfMessage(m));
    // Showing an older stretch (a search result): the newest load again on the way back.
    if (!conv.newer) conv.messages.set(m.id, m);
    // Stored after all (its ack was lost with the connection): no longer "not sent".
    if (m.from === me && m.cid) conv.unsent = conv.unsent.filter((p) => p.cid !== m.cid);
    if (!conv.last || m.id > conv.last.id) conv.last = m;
    conv.typing.delete(m.from);
    // Read only while it is on screen: a hidden tab counts it for the title badge.
    if (m.from !== me && !(isShowing(conv) && !document.hidden) && m.id > conv.readId) {
      conv.unread += 1;
      if ((m.mentions || []).includes(me)) conv.mentions = (conv.mentions || 0) + 1;
      notify(conv, m);
    }
    if (isShowing(conv) && !document.hidden) markRead(conv);
    if (state.openKey === conv.key) { renderMessages(); renderTyping(); }
    renderSidebar();
  });

  // Protocol 1.2: a message as it is now (edited, deleted, its reactions), if it is shown.
  function messageChanged(m) {
    learnNames(m);
    const conv = conversation(addressOfMessage(m));
    if (!conv.messages.has(m.id) && !(conv.last && conv.last.id === m.id)) return;
    if (conv.messages.has(m.id)) conv.messages.set(m.id, m);
    if (conv.last && conv.last.id === m.id) conv.last = m;
    if (state.openKey === conv.key) renderMessages();
    renderSidebar();
  }

  client.on("edited", (e) => {
    messageChanged(e.message);
    // Only those an edit newly mentions are told (a mention already there was told once).
    if ((e.new_mentions || []).includes(me) && e.message.from !== me) {
      notify(conversation(addressOfMessage(e.message)), e.message);
    }
  });
  client.on("deleted", (e) => messageChanged(e.message));
  client.on("changed", (m) => messageChanged(m));

  client.on("reaction", (r) => {
    for (const conv of state.conversations.values()) {
      const m = conv.messages.get(r.id);
      if (!m) continue;
      const reactions = (m.reactions || []).map((x) => Object.assign({}, x, {users: [...x.users]}));
      let entry = reactions.find((x) => x.emoji === r.emoji);
      if (!entry) { entry = {emoji: r.emoji, count: 0, users: []}; reactions.push(entry); }
      entry.count = r.count;
      if (r.on && !entry.users.includes(r.user) && entry.users.length < 20) entry.users.push(r.user);
      if (!r.on) entry.users = entry.users.filter((u) => u !== r.user);
      messageChanged(Object.assign({}, m, {rev: r.rev, reactions: reactions.filter((x) => x.count > 0)}));
    }
  });

  // Someone (perhaps this user, elsewhere) chose a new name: shown wherever they appear.
  client.on("profile", (p) => {
    learnName(p.user, p.name);
    if (p.user === me) renderMe();
    renderNames();
  });

  /** Draw again everything that shows people's names (after one changed). */
  function renderNames() {
    renderSidebar();
    if (!state.openKey) return;
    renderHeader();
    renderMembers();
    renderMessages();
    renderReplyBar();
    renderTyping();
  }

  function renderMe() {
    $("me").textContent = nameOf(me);
    $("me").title = "@" + me;
    const mine = avatar(me, "small");
    mine.id = "me-avatar";
    $("me-avatar").replaceWith(mine);
  }

  $("profile-toggle").addEventListener("click", () => {
    const panel = $("profile-form");
    panel.hidden = !panel.hidden;
    $("profile-toggle").setAttribute("aria-expanded", String(!panel.hidden));
    if (!panel.hidden) {
      $("profile-name").value = nameOf(me);
      showError($("profile-error"), "");
      $("profile-name").focus();
    }
  });
  $("profile-cancel").addEventListener("click", () => {
    $("profile-form").hidden = true;
    $("profile-toggle").setAttribute("aria-expanded", "false");
  });
  $("profile-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const name = $("profile-name").value.trim();
    if (!name) { showError($("profile-error"), "Type the name people should see."); return; }
    try {
      const reply = await client.request({type: "profile", name});
      learnName(me, reply.name);
      renderMe();
      renderNames();
      $("profile-form").hidden = true;
      $("profile-toggle").setAttribute("aria-expanded", "false");
    } catch (error) {
      showError($("profile-error"), describeError(error));
    }
  });

  client.on("presence", (p) => {
    learnName(p.user, p.name);
    if (p.online) state.online.add(p.user); else state.online.delete(p.user);
    renderSidebar();
    if (state.openKey) { renderHeader(); renderMembers(); }
  });

  client.on("read", (r) => {
    const conv = conversation(r.of);
    if (r.id <= conv.readId && !conv.unread) return;
    conv.readId = Math.max(conv.readId, r.id);
    const newest = conv.last ? conv.last.id : 0;
    conv.unread = r.id >= newest ? 0
      : [...conv.messages.values()].filter((m) => m.id > conv.readId && m.from !== me).length;
    conv.mentions = r.id >= newest ? 0 : [...conv.messages.values()].filter((m) =>
      m.id > conv.readId && m.from !== me && (m.mentions || []).includes(me)).length;
    renderSidebar();
  });

  client.on("receipt", (r) => {
    const conv = conversation(r.of);
    noteSeen(conv, r.user, r.id);
    if (state.openKey === conv.key) renderMessages();
  });

  // Typing: shown for 6 s after the last notice, or until that person's message arrives.
  client.on("typing", (t) => {
    const conv = conversation(t.to);
    clearTimeout(conv.typing.get(t.user));
    conv.typing.set(t.user, setTimeout(() => {
      conv.typing.delete(t.user);
      renderTyping();
      renderSidebar();
    }, 6000));
    renderTyping();
    renderSidebar();
  });

  function renderTyping() {
    const conv = state.conversations.get(state.openKey);
    $("typing").textContent = conv ? typingText(conv) : "";
  }

  // -- desktop notifications and the title badge (opt-in) ---------------------

  function notify(conv, m) {
    // Direct messages notify, and (1.2) messages that mention this user, even in a group.
    const mentioned = (m.mentions || []).includes(me);
    if (!document.hidden || (conv.address.user === undefined && !mentioned)) return;
    if (!("Notification" in window) || Notification.permission !== "granted") return;
    if (localStorage.getItem("chat-notify") !== "on") return;
    const note = new Notification(nameOf(m.from), {body: previewText(m).slice(0, 200), tag: conv.key});
    note.onclick = () => { window.focus(); openConversation(conv.address); note.close(); };
  }

  document.addEventListener("visibilitychange", () => {
    const conv = state.conversations.get(state.openKey);
    if (!document.hidden && conv && isShowing(conv)) { conv.unread = 0; conv.mentions = 0; markRead(conv); }
    renderSidebar();
  });

  function membershipChanged(event, joined) {
    const groupConv = state.conversations.get(keyOf({group: event.group}));
    notePrivate(event.group, event.private);
    // A quiet line in the conversation: "bob joined", "bob left" (live only, not history);
    // 1.2: "alice added bob", "alice removed bob".
    if (groupConv && groupConv.loaded && !(event.user === me && !joined)) {
      const ids = [...groupConv.messages.keys()];
      groupConv.notices.push({after: ids.length ? Math.max(...ids) : 0, ts: new Date(),
        user: event.user, joined, by: event.by});
      if (state.openKey === groupConv.key) renderMessages();
    }
    if (event.user === me) {
      if (!joined && $("join-note").textContent.endsWith(`# ${event.group}.`)) showError($("join-note"), "");
      // Someone else added or removed this user: say who, where the groups are.
      if (event.by && event.by !== me) {
        showError($("join-note"), joined ? `${event.by} added you to # ${event.group}.`
          : `${event.by} removed you from # ${event.group}.`);
      }
      if (joined && !state.groups.includes(event.group)) state.groups.push(event.group);
      if (!joined) {
        state.groups = state.groups.filter((g) => g !== event.group);
        const conv = state.conversations.get(keyOf({group: event.group}));
        if (conv) { conv.loaded = false; conv.complete = false; conv.messages.clear(); conv.unread = 0; }
        if (state.openKey === keyOf({group: event.group})) openConversation({all: true}, "replace");
      }
      renderSidebar();
    }
    const conv = state.conversations.get(keyOf({group: event.group}));
    if (conv && state.openKey === conv.key) loadMembers(conv);
  }
  client.on("joined", (e) => membershipChanged(e, true));
  client.on("left", (e) => membershipChanged(e, false));
  // Protocol 1.2: a member's role changed (by an owner, or the admin).
  function roleChanged(e) {
    const conv = state.conversations.get(keyOf({group: e.group}));
    if (!conv) return;
    const member = (conv.members || []).find((m) => m.user === e.user);
    if (member) member.role = e.role;
    if (conv.loaded) {
      const ids = [...conv.messages.keys()];
      conv.notices.push({after: ids.length ? Math.max(...ids) : 0, ts: new Date(),
        user: e.user, role: e.role, by: e.by});
    }
    if (state.openKey === conv.key) { renderMembers(); renderMessages(); }
  }
  client.on("role", roleChanged);

  // -- what the user does ------------------------------------------------------

  function autosize() {
    const box = $("body");
    box.style.height = "auto";
    // A hidden textarea measures 0: keep its natural height until it shows.
    if (box.scrollHeight) box.style.height = Math.min(box.scrollHeight, 180) + "px";
    const length = [...box.value].length;
    const over = length - config.maxBodyChars;
    $("char-count").textContent = length > config.maxBodyChars * 0.9
      ? (over > 0 ? `· ${plural(over, "character")} over the limit` : `· ${plural(config.maxBodyChars - length, "character")} left`) : "";
    $("char-count").className = over > 0 ? "over" : "";
  }

  async function send() {
    const box = $("body");
    const body = box.value;
    const conv = state.conversations.get(state.openKey);
    const attached = conv.attachments || [];
    if (attached.some((a) => a.status === "uploading")) {
      showError($("send-error"), "Wait for the files to finish uploading, or cancel them.");
      return;
    }
    if (attached.some((a) => a.status === "failed")) {
      showError($("send-error"), "A file could not be uploaded: Retry it or remove it first.");
      return;
    }
    const files = attached.map((a) => a.upload);
    if (!body.trim() && !files.length) return;
    box.value = "";
    conv.draft = "";
    conv.attachments = [];
    renderAttachments();
    autosize();
    showError($("send-error"), "");
    const reply = state.replyTo && state.replyTo.key === conv.key ? state.replyTo.id : undefined;
    state.replyTo = null;
    renderReplyBar();
    await sendBody(conv, files.length && !body.trim() ? "" : body, newCid(), reply, files);
  }

  const KEPT_ERRORS = new Set(["rate_limited", "unavailable", "not_connected", "disconnected", "timeout"]);

  /** A message's client id (protocol 1.1 `cid`): a Retry of it is never stored twice. */
  function newCid() {
    if (crypto.randomUUID) return crypto.randomUUID();
    // Pages served over plain http from another host have no randomUUID.
    return Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("");
  }

  /**
   * Send; a refusal the user can retry keeps the message in place, marked "not sent".
   * Its cid goes with every try: if the connection dropped after the server
   * stored it, the retry gets the first ack and sync brings the message once.
   */
  async function sendBody(conv, body, cid = newCid(), replyTo = undefined, files = []) {
    try {
      const command = {type: "send", to: conv.address, body, cid};
      if (replyTo !== undefined) command.reply_to = replyTo;
      if (files.length) command.files = files.map((f) => f.upload);
      await client.request(command);
    } catch (error) {
      // Its message came before the connection dropped: it got through.
      if ([...conv.messages.values()].some((m) => m.from === me && m.cid === cid)) return;
      if (KEPT_ERRORS.has(error.code)) {
        conv.unsent.push({body, cid, files, reason: describeError(error)});
        if (state.openKey === conv.key) renderMessages();
        return;
      }
      if (state.openKey === conv.key) {
        showError($("send-error"), describeError(error));
        if (!$("body").value) { $("body").value = body; autosize(); }
        // Files refused with the message stay attached (unless they were the reason).
        if (files.length && error.code !== "no_such_upload" && !conv.attachments.length) {
          conv.attachments = files.map((upload) => ({name: upload.name, size: upload.size,
            status: "done", progress: 1, upload}));
          renderAttachments();
        }
      } else if (!conv.draft) conv.draft = body;
    }
  }

  // -- protocol 1.2: attaching files (button, drag and drop, paste) ----------

  const MAX_FILES = 10;

  /** Why an upload failed, in words: which limit, or what to do. */
  function uploadFailure(status, answer, name) {
    const code = answer && answer.error;
    if (code === "too_large" || (status === 413 && !code)) {
      return `${name} is larger than the ${humanSize(config.maxUploadBytes)} limit for one file.`;
    }
    if (code === "quota") {
      return `Your files would take more than your ${humanSize(config.uploadQuotaBytes)} of storage. Delete some messages with files first.`;
    }
    if (code === "rate_limited") return "Too many uploads in a minute. Wait a little, then Retry.";
    if (code === "bad_file") return `${name} cannot be sent: ${answer.message}.`;
    if (status === 403) return "Your session has ended. Reload the page to log in again.";
    if (status === 0) return "The upload was cut off (connection lost). Retry when you are back online.";
    return (answer && answer.message) || `The server refused the file (HTTP ${status}).`;
  }

  function attach(fileList) {
    const conv = state.conversations.get(state.openKey);
    if (!conv || !fileList || !fileList.length) return;
    showError($("send-error"), "");
    for (const file of fileList) {
      if (conv.attachments.length >= MAX_FILES) {
        showError($("send-error"), `A message carries at most ${MAX_FILES} files.`);
        break;
      }
      const item = {file, name: file.name || "pasted image", size: file.size, status: "uploading",
        progress: 0, upload: null, error: "", xhr: null};
      conv.attachments.push(item);
      startUpload(conv, item);
    }
    renderAttachments();
  }

  function startUpload(conv, item) {
    item.status = "uploading";
    item.progress = 0;
    item.error = "";
    if (item.size > config.maxUploadBytes) {
      // Known before a byte goes up: the server would refuse it anyway.
      item.status = "failed";
      item.error = uploadFailure(413, {error: "too_large"}, item.name);
      return;
    }
    const form = new FormData();
    form.append("file", item.file, item.name);
    const xhr = new XMLHttpRequest();
    item.xhr = xhr;
    xhr.open("POST", "/uploads/");
    xhr.setRequestHeader("X-CSRFToken", config.csrfToken);
    xhr.responseType = "json";
    xhr.upload.addEventListener("progress", (ev) => {
      if (!ev.lengthComputable) return;
      item.progress = ev.loaded / ev.total;
      updateProgress(item);
    });
    xhr.addEventListener("load", () => {
      item.xhr = null;
      if (xhr.status === 201 && xhr.response && xhr.response.upload) {
        item.status = "done";
        item.progress = 1;
        item.upload = xhr.response;
      } else {
        item.status = "failed";
        item.error = uploadFailure(xhr.status, xhr.response, item.name);
      }
      if (state.openKey === conv.key) renderAttachments();
    });
    xhr.addEventListener("error", () => {
      item.xhr = null;
      item.status = "failed";
      item.error = uploadFailure(0, null, item.name);
      if (state.openKey === conv.key) renderAttachments();
    });
    xhr.send(form);
  }

  function removeAttachment(conv, item) {
    if (item.xhr) item.xhr.abort();
    conv.attachments = conv.attachments.filter((a) => a !== item);
    renderAttachments();
  }

  function updateProgress(item) {
    const bar = item.node && item.node.querySelector("progress");
    if (bar) {
      bar.value = Math.round(item.progress * 100);
      bar.textContent = Math.round(item.progress * 100) + "%";
    }
  }

  function renderAttachments() {
    const list = $("attachments");
    const conv = state.conversations.get(state.openKey);
    const items = conv ? conv.attachments : [];
    list.hidden = !items.length;
    list.replaceChildren(...items.map((item) => {
      const node = el("li", {className: "attachment " + item.status},
        el("span", {className: "attachment-text"},
          el("bdi", {className: "attachment-name", dir: "auto", text: item.name, title: item.name}),
          el("span", {className: "attachment-size", text: humanSize(item.size)})));
      if (item.status === "uploading") {
        node.append(el("progress", {max: "100", value: String(Math.round(item.progress * 100)),
          "aria-label": "Uploading " + item.name}));
        node.append(el("button", {type: "button", className: "link", text: "Cancel",
          "aria-label": "Cancel uploading " + item.name, onclick: () => removeAttachment(conv, item)}));
      } else if (item.status === "failed") {
        node.append(el("span", {className: "attachment-error", role: "alert", text: item.error}));
        if (item.file) {
          node.append(el("button", {type: "button", className: "link", text: "Retry",
            onclick: () => { startUpload(conv, item); renderAttachments(); }}));
        }
        node.append(el("button", {type: "button", className: "link", text: "Remove",
          "aria-label": "Remove " + item.name, onclick: () => removeAttachment(conv, item)}));
      } else {
        node.append(el("span", {className: "attachment-ready", text: "Ready"}));
        node.append(el("button", {type: "button", className: "link", text: "Remove",
          "aria-label": "Remove " + item.name, onclick: () => removeAttachment(conv, item)}));
      }
      item.node = node;
      return node;
    }));
  }

  $("attach").addEventListener("click", () => $("file-input").click());
  $("file-input").addEventListener("change", () => {
    attach([...$("file-input").files]);
    $("file-input").value = "";
    $("body").focus();
  });
  const carriesFiles = (ev) => ev.dataTransfer && [...ev.dataTransfer.types].includes("Files");
  $("conversation").addEventListener("dragover", (ev) => {
    if (!carriesFiles(ev)) return;
    ev.preventDefault();
    ev.dataTransfer.dropEffect = "copy";
    $("conversation").classList.add("dropping");
  });
  $("conversation").addEventListener("dragleave", (ev) => {
    if (!$("conversation").contains(ev.relatedTarget)) $("conversation").classList.remove("dropping");
  });
  $("conversation").addEventListener("drop", (ev) => {
    $("conversation").classList.remove("dropping");
    if (!carriesFiles(ev)) return;
    ev.preventDefault();
    attach([...ev.dataTransfer.files]);
  });
  $("body").addEventListener("paste", (ev) => {
    const files = ev.clipboardData ? [...ev.clipboardData.files] : [];
    if (!files.length) return;
    // A pasted image, not its file name as text.
    ev.preventDefault();
    attach(files);
  });

  let typingSentAt = 0;
  function sendTyping() {
    const conv = state.conversations.get(state.openKey);
    if (!conv || conv.address.all || !client.connected || !$("body").value.trim()) return;
    if (conv.address.user === me) return;
    const now = Date.now();
    if (now - typingSentAt < 3000) return;
    typingSentAt = now;
    client.send({type: "typing", to: conv.address});
  }

  $("composer").addEventListener("submit", (ev) => { ev.preventDefault(); send(); });
  $("body").addEventListener("keydown", (ev) => {
    const offered = $("mention-list");
    if (ev.key === "Tab" && offered && !offered.hidden && offered.firstChild) {
      ev.preventDefault();
      offered.firstChild.click();
      return;
    }
    if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) { ev.preventDefault(); send(); }
  });
  $("body").addEventListener("input", () => {
    autosize(); showError($("send-error"), ""); sendTyping();
    clearTimeout(mentionTimer);
    mentionTimer = setTimeout(offerMentions, 150);
  });
  let mentionTimer = null;

  // -- protocol 1.2: typing `@` offers people, the conversation's members first --

  function mentionPrefix() {
    const box = $("body");
    const before = box.value.slice(0, box.selectionStart);
    const match = before.match(/(^|[^\p{L}\p{N}\p{M}_.@+-])@([\p{L}\p{N}\p{M}_.@+-]{0,150})$/u);
    return match ? match[2] : null;
  }

  async function offerMentions() {
    const prefix = mentionPrefix();
    const conv = state.conversations.get(state.openKey);
    if (prefix === null || !conv) { renderMentionList([]); return; }
    const first = [];
    if (conv.address.user !== undefined) first.push(conv.address.user);
    for (const m of conv.members || []) first.push(m.user);
    let others = [];
    try {
      const reply = await client.request({type: "users", q: prefix, limit: 8});
      for (const u of reply.users) learnName(u.user, u.name);
      others = reply.users.map((u) => u.user);
    } catch (error) { /* offline: members only */ }
    if (mentionPrefix() !== prefix) return; // typed on meanwhile
    // Members as `users` finds people (a prefix of the username or of a word of
    // the name), then whom the server found; `@username` goes in.
    const names = [...new Set([...first.filter((n) => findsPerson(prefix, n)), ...others])]
      .filter((n) => n !== me).slice(0, 6);
    renderMentionList(names);
  }

  /** Accents and case ignored, as the server's `users` ignores them. */
  function foldText(text) {
    return text.normalize("NFKD").replace(/\p{M}/gu, "").toLowerCase();
  }

  function findsPerson(prefix, user) {
    const folded = foldText(prefix);
    return foldText(user).startsWith(folded)
      || foldText(nameOf(user)).split(/[^\p{L}\p{N}]+/u).some((word) => word && word.startsWith(folded));
  }

  function renderMentionList(names) {
    let list = $("mention-list");
    if (!list) {
      list = el("div", {id: "mention-list", className: "mention-list", role: "listbox",
        "aria-label": "People to mention"});
      $("composer").before(list);
    }
    list.replaceChildren(...names.map((name) => el("button", {type: "button", role: "option",
      className: "mention-option", title: "@" + name, onclick: () => pickMention(name)},
      el("bdi", {className: "mention-name", text: nameOf(name)}),
      el("span", {className: "mention-user", text: " @" + name}))));
    list.hidden = names.length === 0;
  }

  function pickMention(name) {
    const box = $("body");
    const prefix = mentionPrefix();
    if (prefix === null) return;
    const at = box.selectionStart - prefix.length;
    box.value = box.value.slice(0, at) + name + " " + box.value.slice(box.selectionStart);
    box.selectionStart = box.selectionEnd = at + name.length + 1;
    renderMentionList([]);
    box.focus();
  }

  $("join-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const name = $("join-name").value.trim();
    if (!name) return;
    showError($("join-error"), "");
    try {
      // "Private" creates a new private group (1.2); otherwise join, creating a public one.
      const reply = await client.request($("join-private").checked
        ? {type: "create", group: name, private: true} : {type: "join", group: name});
      notePrivate(reply.group, reply.private);
      $("join-private").checked = false;
      renderJoinButton();
      if (!state.groups.includes(reply.group)) state.groups.push(reply.group);
      $("join-name").value = "";
      clearTimeout(searchTimer);
      $("group-results").replaceChildren();
      openConversation({group: reply.group});
      showError($("join-note"), reply.created ? `Created # ${reply.group}.` : `Joined # ${reply.group}.`);
    } catch (error) {
      showError($("join-error"), describeError(error));
    }
  });

  function renderJoinButton() {
    $("join-submit").textContent = $("join-private").checked ? "Create" : "Join";
  }
  $("join-private").addEventListener("change", renderJoinButton);

  $("invite-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const conv = state.conversations.get(state.openKey);
    const user = $("invite-name").value.trim();
    if (!conv || conv.address.group === undefined || !user) return;
    showError($("member-error"), "");
    try {
      await client.request({type: "invite", group: conv.address.group, user});
      $("invite-name").value = "";
    } catch (error) {
      showError($("member-error"), describeError(error));
    }
  });

  // Leaving asks first, in place: "Leave # G?" with Leave and Cancel.
  function askLeave(asking) {
    const conv = state.conversations.get(state.openKey);
    $("leave-confirm").hidden = !asking;
    $("leave-button").hidden = asking || !conv || conv.address.group === undefined;
    if (asking) {
      $("leave-question").textContent = `Leave # ${conv.address.group}?`;
      $("leave-yes").focus();
    }
  }
  $("leave-button").addEventListener("click", () => askLeave(true));
  $("leave-no").addEventListener("click", () => { askLeave(false); $("leave-button").focus(); });
  $("leave-yes").addEventListener("click", async () => {
    const conv = state.conversations.get(state.openKey);
    askLeave(false);
    if (!conv || conv.address.group === undefined) return;
    try {
      const reply = await client.request({type: "leave", group: conv.address.group});
      membershipChanged(reply, false);
    } catch (error) {
      showError($("send-error"), describeError(error));
    }
  });

  $("members-toggle").addEventListener("click", () => {
    state.membersOpen = !state.membersOpen;
    renderMembers();
  });

  $("messages").addEventListener("scroll", () => {
    const conv = state.conversations.get(state.openKey);
    if (conv && conv.loaded && $("messages").scrollTop < 120) loadHistory(conv);
  });

  // -- finding people and groups -------------------------------------------

  const relativeFormat = new Intl.RelativeTimeFormat(undefined, {numeric: "auto"});
  function lastSeenText(iso) {
    if (!iso) return "offline";
    const minutes = Math.round((Date.parse(iso) - Date.now()) / 60000);
    if (minutes > -60) return "last seen " + relativeFormat.format(minutes, "minute");
    if (minutes > -60 * 24) return "last seen " + relativeFormat.format(Math.round(minutes / 60), "hour");
    return "last seen " + relativeFormat.format(Math.round(minutes / 1440), "day");
  }

  let searchTimer = null;
  function debounced(run) {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(run, 200);
  }

  /**
   * While the search box holds a name, its results replace the conversation
   * list (so nobody is listed twice), under their own heading; "Nobody found"
   * when no one matches.
   */
  function showPeopleSearch(searching, text) {
    $("people-found").hidden = !searching;
    $("people-found-title").textContent = text || "";
    $("conversation-list").hidden = searching;
    if (searching) $("people-empty").hidden = true;
    else renderSidebar();
  }

  async function searchPeople() {
    const q = $("people-search").value.trim();
    if (!q) { $("people-results").replaceChildren(); showPeopleSearch(false); return; }
    if (!client.connected) { $("people-results").replaceChildren(); showPeopleSearch(true, "Not connected"); return; }
    let reply;
    try { reply = await client.request({type: "users", q, limit: 10}); } catch (error) { return; }
    if ($("people-search").value.trim() !== q) return;
    const names = new Set();
    const users = reply.users.filter((u) => u.user !== me && !names.has(u.user) && names.add(u.user));
    for (const u of users) learnName(u.user, u.name);
    showPeopleSearch(true, users.length ? "People" : "Nobody found");
    $("people-results").replaceChildren(...users.map((u) =>
      el("li", {dataset: {user: u.user}}, el("button", {type: "button", className: "conv-link",
        onclick: () => {
          $("people-search").value = "";
          $("people-results").replaceChildren();
          showPeopleSearch(false);
          openConversation({user: u.user});
        }},
      el("span", {className: "avatar-wrap"}, avatar(u.user, "small"),
        el("span", {className: "presence " + (u.online ? "on" : "off"), "aria-hidden": "true"})),
      el("span", {className: "conv-text"}, el("bdi", {className: "conv-name", text: nameOf(u.user), title: "@" + u.user}),
        el("span", {className: "conv-preview",
          text: "@" + u.user + " · " + (u.online ? "online" : lastSeenText(u.last_seen))}))))));
  }

  async function browseGroups() {
    const q = $("join-name").value.trim();
    if (!client.connected) return;
    let reply;
    try { reply = await client.request({type: "groups", q, limit: 10}); } catch (error) { return; }
    if ($("join-name").value.trim() !== q) return;
    $("group-results").replaceChildren(...reply.groups.map((g) =>
      el("li", {dataset: {group: g.group}}, el("button", {type: "button", className: "conv-link",
        onclick: () => {
          $("group-results").replaceChildren();
          if (g.member) openConversation({group: g.group});
          else { $("join-name").value = g.group; $("join-form").requestSubmit(); }
        }},
      g.private ? lockIcon() : el("span", {className: "conv-icon", "aria-hidden": "true", text: "#"}),
      el("span", {className: "conv-text"}, el("bdi", {className: "conv-name", text: g.group}),
        el("span", {className: "conv-preview",
          // `online` is told to members only (null otherwise).
          text: plural(g.members, "member") + (g.online === null ? "" : `, ${g.online} online`)
            + (g.member ? " · joined" : "")}))))));
  }

  $("people-search").addEventListener("input", () => debounced(searchPeople));
  $("people-search").addEventListener("keydown", (ev) => {
    if (ev.key === "Escape") { $("people-search").value = ""; debounced(searchPeople); }
  });
  $("join-name").addEventListener("input", () => {
    showError($("join-note"), "");
    showError($("join-error"), "");
    debounced(browseGroups);
  });
  $("join-name").addEventListener("focus", () => debounced(browseGroups));

  $("jump-unread").addEventListener("click", () => {
    const divider = $("new-divider");
    if (divider) divider.scrollIntoView({block: "start"});
  });
  $("notify-toggle").addEventListener("click", async () => {
    if (!("Notification" in window)) return;
    const on = localStorage.getItem("chat-notify") === "on";
    if (on) localStorage.setItem("chat-notify", "off");
    else if ((await Notification.requestPermission()) === "granted") localStorage.setItem("chat-notify", "on");
    renderNotifyToggle();
  });
  function renderNotifyToggle() {
    const on = localStorage.getItem("chat-notify") === "on";
    // On a phone only the bell shows: the label stays its accessible name.
    $("notify-label").textContent = on ? "Notifications on" : "Notify me";
    $("notify-toggle").title = on ? "Notifications on" : "Notify me";
    $("notify-toggle").setAttribute("aria-pressed", String(on));
  }
  renderNotifyToggle();


  // -- searching messages (protocol 1.2) ----------------------------------------

  const SEARCH_LIMIT = 20;
  const search = {q: "", next: null, seq: 0};

  function searchConversationTitle(m) {
    const address = addressOfMessage(m);
    if (address.all) return "Everyone";
    if (address.group !== undefined) return "# " + address.group;
    return address.user === me ? "Notes to self" : "@ " + nameOf(address.user);
  }

  /** A body with its matched words in <mark> (text nodes only: nothing is parsed as HTML). */
  function highlighted(body, spans) {
    const parts = [];
    let at = 0;
    const chars = Array.from(body); // spans count code points, as the server does
    for (const [start, end] of spans) {
      if (start < at || end > chars.length) continue;
      parts.push(document.createTextNode(chars.slice(at, start).join("")));
      parts.push(el("mark", {text: chars.slice(start, end).join("")}));
      at = end;
    }
    parts.push(document.createTextNode(chars.slice(at).join("")));
    return parts;
  }

  function searchResultItem(result) {
    const m = result.message;
    learnName(m.from, m.from_name);
    const date = new Date(m.ts);
    return el("li", {dataset: {id: String(m.id)}},
      el("button", {type: "button", className: "search-result", onclick: () => openResult(m)},
        el("span", {className: "search-where"},
          el("bdi", {className: "search-conv", text: searchConversationTitle(m)}),
          // A direct conversation's title already names the other person.
          addressOfMessage(m).user === m.from ? null : el("bdi", {className: "search-from", text: m.from === me ? "you" : nameOf(m.from)}),
          el("time", {datetime: m.ts, title: fullFormat.format(date),
            text: shortDayFormat.format(date) + " " + timeFormat.format(date)})),
        el("span", {className: "search-body", dir: "auto"}, ...highlighted(m.body, result.spans))));
  }

  function showSearchStatus(text, error = false) {
    $("search-status").textContent = text;
    $("search-status").className = "search-status" + (error ? " error" : "");
  }

  /** Ask the server; `more` appends the next page. Replies to an older query are dropped. */
  async function runSearch(more = false) {
    const q = $("search-box").value.trim();
    if (!q) { closeSearch(); return; }
    $("search-panel").hidden = false;
    if (!client.connected) { showSearchStatus("Not connected: search when the connection is back."); return; }
    const seq = ++search.seq;
    const command = {type: "search", q, limit: SEARCH_LIMIT};
    if (more && search.next !== null) command.before = search.next;
    if (!more) showSearchStatus("Searching…");
    let reply;
    try { reply = await client.request(command); } catch (error) {
      if (seq === search.seq) showSearchStatus(error.code === "bad_command" ? error.message.replace(/^q: /, "") : describeError(error), true);
      return;
    }
    if (seq !== search.seq) return;
    search.q = q;
    search.next = reply.more ? reply.next : null;
    const items = reply.results.map(searchResultItem);
    if (more) $("search-results").append(...items);
    else $("search-results").replaceChildren(...items);
    const shown = $("search-results").children.length;
    showSearchStatus(shown ? (reply.more ? `${shown}+ messages` : plural(shown, "message")) : "No messages found.");
    $("search-more").hidden = !reply.more;
  }

  function closeSearch() {
    search.seq += 1;
    $("search-panel").hidden = true;
    $("search-results").replaceChildren();
    $("search-more").hidden = true;
  }

  /** Open a result's conversation at that message: the messages around it, it in the middle. */
  async function openResult(m) {
    $("search-panel").hidden = true;
    const conv = conversation(addressOfMessage(m));
    if (!conv.messages.has(m.id)) {
      // Nothing else loads into it meanwhile: the stretch around the result replaces it.
      conv.loaded = true;
      conv.messages = new Map();
      conv.newer = true;
    }
    openConversation(conv.address);
    if (conv.messages.has(m.id) && !conv.newer) { showJumped(m.id); return; }
    try {
      const reply = await client.request({type: "history", of: conv.address, around: m.id, limit: PAGE_SIZE});
      conv.messages = new Map();
      for (const each of reply.messages) { learnName(each.from, each.from_name); conv.messages.set(each.id, each); }
      conv.complete = !reply.more;
      conv.newer = reply.newer;
      conv.landing = false;
      conv.error = "";
    } catch (error) {
      // Not there after all (deleted meanwhile, or offline): the newest, as usual.
      conv.newer = false;
      conv.loaded = false;
      loadHistory(conv);
      return;
    }
    if (state.openKey === conv.key) { renderMessages(); showJumped(m.id); }
  }

  function showJumped(id) {
    const target = $("message-list").querySelector(`li.message[data-id="${id}"]`);
    if (!target) return;
    target.scrollIntoView({block: "center"});
    target.classList.add("jumped");
    setTimeout(() => target.classList.remove("jumped"), 2000);
  }

  /** Back from an older stretch to the newest messages, as a fresh conversation loads them. */
  function showNewest(conv) {
    conv.messages = new Map();
    conv.newer = false;
    conv.loaded = false;
    conv.complete = false;
    loadHistory(conv).then(() => { $("messages").scrollTop = $("messages").scrollHeight; });
  }

  $("search-form").addEventListener("submit", (ev) => { ev.preventDefault(); runSearch(); });
  $("search-box").addEventListener("input", () => debouncedSearch());
  $("search-box").addEventListener("focus", () => { if ($("search-box").value.trim()) $("search-panel").hidden = false; });
  $("search-box").addEventListener("keydown", (ev) => {
    if (ev.key === "Escape") { $("search-box").value = ""; closeSearch(); $("search-box").blur(); }
    if (ev.key === "ArrowDown") { const first = $("search-results").querySelector("button"); if (first) { ev.preventDefault(); first.focus(); } }
  });
  $("search-more").addEventListener("click", () => runSearch(true));
  // Up and down move between results (up from the first: back to the box).
  $("search-results").addEventListener("keydown", (ev) => {
    if (ev.key !== "ArrowDown" && ev.key !== "ArrowUp") return;
    const buttons = [...$("search-results").querySelectorAll("button")];
    const at = buttons.indexOf(document.activeElement);
    if (at < 0) return;
    ev.preventDefault();
    const next = at + (ev.key === "ArrowDown" ? 1 : -1);
    if (next < 0) $("search-box").focus();
    else if (next < buttons.length) buttons[next].focus();
  });
  let searchDelay = null;
  function debouncedSearch() {
    clearTimeout(searchDelay);
    searchDelay = setTimeout(() => runSearch(), 250);
  }
  document.addEventListener("keydown", (ev) => {
    const typing = ev.target instanceof HTMLElement && ev.target.closest("input, textarea, [contenteditable]");
    if ((ev.key === "k" && (ev.ctrlKey || ev.metaKey)) || (ev.key === "/" && !typing && !ev.ctrlKey && !ev.metaKey && !ev.altKey)) {
      ev.preventDefault();
      $("search-box").focus();
      $("search-box").select();
    } else if (ev.key === "Escape" && !$("search-panel").hidden) {
      closeSearch();
    }
  });
  document.addEventListener("click", (ev) => {
    if (!$("search-panel").hidden && !ev.target.closest("#search-panel, #search-form")) $("search-panel").hidden = true;
  });

  $("back").addEventListener("click", () => {
    // The list has no address of its own: the back button from a conversation returns to it.
    window.history.pushState(null, "", location.pathname + location.search);
    $("app").dataset.view = "list";
    renderSidebar();
  });
  $("retry").addEventListener("click", () => client.retryNow());
  renderMe();

  window.chatPage = {client, state}; // for the console and the browser tests
  client.connect();
})();
