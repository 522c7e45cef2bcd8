/* chatgate widget: the conversation as the client knows it, and the protocol that keeps it true.
 *
 * Speaks docs/web-protocol.md over a Connection. Keeps the messages by id, applies deltas by
 * offset (so replays never duplicate text), remembers which frames the server has not yet
 * acknowledged and sends them again on the next socket (the server deduplicates by frame id),
 * and resumes after a reconnect from the last point where everything before it was complete.
 * The view subscribes with on(event, fn); this file touches no DOM.
 */
(function (global) {
  "use strict";

  var ChatGate = (global.ChatGate = global.ChatGate || {});
  var Connection = ChatGate.Connection;

  /**
   * Frames kept until the server acknowledges them (`ack`) and re-sent after a reconnect. `stop`
   * is acknowledged too but never re-sent: late, it would stop the next reply instead.
   */
  var ACKNOWLEDGED_TYPES = { message: true, button: true, action: true, upload_done: true };

  function newId() {
    var bytes = new Uint8Array(16);
    global.crypto.getRandomValues(bytes);
    var out = "";
    for (var i = 0; i < bytes.length; i++) out += (bytes[i] + 0x100).toString(16).slice(1);
    return out;
  }

  /** The `sub` claim of a JWT, read without verifying it (only the gateway can): a storage key. */
  function tokenSubject(token) {
    try {
      var part = String(token).split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      while (part.length % 4) part += "=";
      var bytes = Uint8Array.from(global.atob(part), function (c) {
        return c.charCodeAt(0);
      });
      return String(JSON.parse(new TextDecoder().decode(bytes)).sub || "");
    } catch (e) {
      return "";
    }
  }

  function storageGet(key) {
    try {
      return global.localStorage.getItem(key);
    } catch (e) {
      return null; // storage disabled (privacy mode, sandboxed iframe): the chat still works
    }
  }

  function storageSet(key, value) {
    try {
      if (value == null) global.localStorage.removeItem(key);
      else global.localStorage.setItem(key, value);
    } catch (e) {
      /* see storageGet */
    }
  }

  /**
   * @param {object} options
   *   gateway: the gateway's base URL ("https://gw.example.com")
   *   token: a host site's signed identity token (optional)
   *   handler: a named @app.message handler for new sessions (optional)
   *   reconnectDelay, reconnectMaxDelay: backoff bounds in ms
   */
  function ChatClient(options) {
    this.gateway = String(options.gateway || global.location.origin).replace(/\/+$/, "");
    this.token = options.token || null;
    this.refreshToken = options.refreshToken || null; // () => Promise<new host token>
    this.handler = options.handler || null;
    this.storagePrefix = this._scope();
    this.sessionId = storageGet(this.storagePrefix + "session");
    this.visitorToken = this.token ? null : storageGet("chatgate:" + this.gateway + ":visitor");
    this.listeners = {};
    this.messages = []; // in display order
    this.byKey = {}; // key -> message (key is the stored id, or "local:<frame id>" until known)
    this.byInbound = {}; // inbound_id -> message (the user's own messages, matched through ack)
    this.blocks = {}; // block id -> {messageId, block}
    this.outbox = []; // frames not yet acknowledged, in send order
    this.ready = false;
    this.busy = false;
    var self = this;
    this.connection = new Connection({
      url: function () {
        return self._socketUrl();
      },
      baseDelay: options.reconnectDelay || 400,
      maxDelay: options.reconnectMaxDelay || 10000,
      onOpen: function () {
        self._hello();
      },
      onFrame: function (frame) {
        self._handle(frame);
      },
      onState: function (state, detail) {
        if (state !== "open") self.ready = false;
        self._emit("connection", { state: state, detail: detail });
        if (state === "unauthorized") self._renewToken();
      },
    });
  }

  ChatClient.prototype.on = function (event, fn) {
    (this.listeners[event] = this.listeners[event] || []).push(fn);
    return this;
  };

  ChatClient.prototype._emit = function (event, data) {
    var fns = this.listeners[event] || [];
    for (var i = 0; i < fns.length; i++) {
      try {
        fns[i](data);
      } catch (e) {
        if (global.console) global.console.error("chatgate:", e);
      }
    }
  };

  ChatClient.prototype.start = function () {
    this.connection.start();
  };

  ChatClient.prototype.close = function () {
    this.connection.stop();
  };

  // ------------------------------------------------------------ identity & URLs

  /**
   * Where this client keeps its session id: per gateway, per signed-in user (the token's `sub`)
   * or anonymous visitor, per handler. Another user signing in on the same browser never even
   * asks for the previous user's session.
   */
  ChatClient.prototype._scope = function () {
    var who = this.token ? "user:" + tokenSubject(this.token) : "visitor";
    return "chatgate:" + this.gateway + ":" + who + ":" + (this.handler || "") + ":";
  };

  /** Signs in with a new host token (refreshed, or another user's), on a new socket. */
  ChatClient.prototype.setToken = function (token) {
    this.token = token || null;
    var scope = this._scope();
    if (scope !== this.storagePrefix) {
      this.storagePrefix = scope;
      this.sessionId = storageGet(scope + "session");
      this._reset();
    }
    this.connection.restart();
  };

  /** The gateway refused our host token (it expired): ask the host page for a fresh one, once
   * per 10 s, so a page left open overnight signs back in by itself. */
  ChatClient.prototype._renewToken = function () {
    var self = this;
    var now = Date.now();
    if (!this.token || !this.refreshToken || (this.lastRenewal && now - this.lastRenewal < 10000)) return;
    this.lastRenewal = now;
    Promise.resolve()
      .then(function () {
        return self.refreshToken();
      })
      .then(function (token) {
        if (token && token !== self.token) self.setToken(token);
      })
      .catch(function (error) {
        if (global.console) global.console.warn("chatgate: could not renew the identity token", error);
      });
  };

  ChatClient.prototype._identityQuery = function () {
    if (this.token) return "token=" + encodeURIComponent(this.token);
    if (this.visitorToken) return "visitor=" + encodeURIComponent(this.visitorToken);
    return "";
  };

  ChatClient.prototype.url = function (path) {
    var query = this._identityQuery();
    return this.gateway + path + (query ? (path.indexOf("?") === -1 ? "?" : "&") + query : "");
  };

  ChatClient.prototype._socketUrl = function () {
    return this.url("/ws").replace(/^http/, "ws");
  };

  // ------------------------------------------------------------ sending

  /** Queues a frame until acknowledged (for the types the server acks) and sends it if it can. */
  ChatClient.prototype._send = function (frame) {
    frame.id = frame.id || newId();
    if (ACKNOWLEDGED_TYPES[frame.type]) this.outbox.push(frame);
    if (this.ready) this.connection.send(frame);
    return frame;
  };

  /** Shows the user's words at once; `ack` and the stored copy later confirm them. */
  ChatClient.prototype._addLocal = function (frame, text, files) {
    frame.id = frame.id || newId();
    var message = {
      key: "local:" + frame.id,
      id: null,
      role: "user",
      text: text,
      status: "sending",
      attachments: (files || []).map(function (f) {
        return { name: f.name, content_type: f.content_type, url: f.url, size: f.size };
      }),
      inbound_id: null,
      frameId: frame.id,
      created_at: new Date().toISOString(),
    };
    this.messages.push(message);
    this.byKey[message.key] = message;
    this._emit("placed", { message: message, before: null });
    this._setBusy(true);
    this._send(frame);
    return message;
  };

  ChatClient.prototype.sendMessage = function (text, attachments) {
    var frame = { type: "message", text: text };
    var files = attachments || [];
    if (files.length) {
      frame.attachments = files.map(function (f) {
        return { file_id: f.file_id };
      });
    }
    return this._addLocal(frame, text, files);
  };

  ChatClient.prototype.pressButton = function (blockId, value) {
    return this._send({ type: "button", block_id: blockId, value: String(value) });
  };

  /** A suggestion press; a prompt suggestion (promptText set) speaks for the user. */
  ChatClient.prototype.pressSuggestion = function (blockId, index, promptText) {
    var frame = { type: "button", block_id: blockId, value: String(index) };
    if (promptText == null) return this._send(frame);
    return this._addLocal(frame, promptText, []);
  };

  ChatClient.prototype.sendAction = function (name, payload) {
    return this._send({ type: "action", name: name, payload: payload || {} });
  };

  ChatClient.prototype.uploadDone = function (blockId, fileId) {
    return this._send({ type: "upload_done", block_id: blockId, file_id: fileId });
  };

  ChatClient.prototype.stopReply = function () {
    this._send({ type: "stop" });
  };

  /** Forgets the current conversation and starts a new one on a fresh socket. */
  ChatClient.prototype.newConversation = function () {
    this.sessionId = null;
    storageSet(this.storagePrefix + "session", null);
    this._reset();
    this.connection.restart();
  };

  ChatClient.prototype._reset = function () {
    this.messages = [];
    this.byKey = {};
    this.byInbound = {};
    this.blocks = {};
    this.outbox = [];
    this._setBusy(false);
    this._emit("reset", null);
  };

  /**
   * Uploads a File with XHR (fetch has no upload progress). Resolves with the server's
   * {file_id, name, content_type, size, url}; rejects with an Error whose .code is the
   * protocol's error code. onProgress receives a fraction in [0, 1].
   */
  ChatClient.prototype.upload = function (file, onProgress) {
    var self = this;
    return new Promise(function (resolve, reject) {
      if (!self.sessionId) {
        var notReady = new Error("The chat is not connected yet.");
        notReady.code = "not_ready";
        reject(notReady);
        return;
      }
      var form = new FormData();
      form.append("session_id", self.sessionId);
      form.append("file", file, file.name);
      var xhr = new XMLHttpRequest();
      xhr.open("POST", self.url("/upload"));
      // Same origin: the cookie identifies us. Another origin: the visitor or host token in the
      // query does (the gateway never takes identity from a cross-site cookie, and sends no
      // Access-Control-Allow-Credentials, so a credentialed cross-origin request would fail).
      xhr.withCredentials = self.gateway === global.location.origin;
      xhr.responseType = "text";
      xhr.upload.onprogress = function (event) {
        if (event.lengthComputable && onProgress) onProgress(event.loaded / event.total);
      };
      xhr.onload = function () {
        var body = null;
        try {
          body = JSON.parse(xhr.responseText);
        } catch (e) {
          body = null;
        }
        if (xhr.status >= 200 && xhr.status < 300 && body && body.file_id) {
          if (onProgress) onProgress(1);
          resolve(body);
          return;
        }
        var info = (body && body.error) || {};
        var error = new Error(info.message || "The upload failed (HTTP " + xhr.status + ").");
        error.code = info.code || "http_" + xhr.status;
        reject(error);
      };
      xhr.onerror = function () {
        var error = new Error("The upload failed: the gateway could not be reached.");
        error.code = "network";
        reject(error);
      };
      xhr.send(form);
    });
  };

  // ------------------------------------------------------------ receiving

  ChatClient.prototype._hello = function () {
    var frame = { type: "hello", id: newId(), session_id: this.sessionId, after: this.resumePoint() };
    if (!this.sessionId && this.handler) frame.handler = this.handler;
    this.connection.send(frame);
  };

  /**
   * The id after which the server must replay: the last stored id such that every message up
   * to it is final. A reply still streaming (or one we only have part of) is asked for again.
   * (Blocks updated in place since then come too: the store replays rows updated after it.)
   */
  ChatClient.prototype.resumePoint = function () {
    var point = null;
    for (var i = 0; i < this.messages.length; i++) {
      var m = this.messages[i];
      if (!m.id) continue;
      if (m.status === "streaming" || m.gap) break;
      if (point === null || m.id > point) point = m.id;
    }
    return point;
  };

  ChatClient.prototype._handle = function (frame) {
    switch (frame.type) {
      case "ready":
        return this._onReady(frame);
      case "ack":
        return this._onAck(frame);
      case "message":
        return this._onMessage(frame.message || {});
      case "delta":
        return this._onDelta(frame);
      case "done":
        return this._onDone(frame);
      case "block":
        return this._onBlock(frame);
      case "notify":
        return this._emit("notify", { text: frame.text || "", detail: frame.detail || "" });
      case "turn_end":
        this._setBusy(false);
        this._emit("notify", null);
        return this._emit("turn_end", frame);
      case "error":
        return this._onError(frame);
      default:
        return undefined; // a newer server's frame: ignore what we do not know
    }
  };

  ChatClient.prototype._onReady = function (frame) {
    if (this.sessionId && frame.session_id !== this.sessionId) this._reset();
    this.sessionId = frame.session_id;
    storageSet(this.storagePrefix + "session", frame.session_id);
    if (frame.visitor_token && !this.token) {
      this.visitorToken = frame.visitor_token;
      storageSet("chatgate:" + this.gateway + ":visitor", frame.visitor_token);
    }
    this.user = frame.user || null; // {id, email, org_id}: who the gateway says we are
    this.ready = true;
    // A turn cut short by a restart has no turn_end coming, unless its message is still unsent.
    var waiting = this.outbox.some(function (f) {
      return f.type === "message";
    });
    if (!waiting) this._setBusy(false);
    this._emit("ready", frame);
    // Frames the last socket may have lost: the server runs each frame id once.
    for (var i = 0; i < this.outbox.length; i++) this.connection.send(this.outbox[i]);
  };

  ChatClient.prototype._onAck = function (frame) {
    var frameId = frame.id;
    this.outbox = this.outbox.filter(function (f) {
      return f.id !== frameId;
    });
    var local = this.byKey["local:" + frameId];
    if (!local) return;
    local.inbound_id = frame.inbound_id;
    var stored = frame.inbound_id && this.byInbound[frame.inbound_id];
    if (stored && stored !== local) {
      // A replay already brought the stored copy of this message: keep that one.
      this._remove(local);
      return;
    }
    if (frame.inbound_id) this.byInbound[frame.inbound_id] = local;
    local.status = "complete";
    this._emit("message", local);
  };

  ChatClient.prototype._remove = function (message) {
    this.messages = this.messages.filter(function (m) {
      return m !== message;
    });
    delete this.byKey[message.key];
    this._emit("remove", message);
  };

  /**
   * Appends a stored message, unless a replay brings one older than what is shown: then it goes
   * before the first newer stored message (ids sort by creation time). Optimistic messages
   * without an id keep their place.
   */
  ChatClient.prototype._insert = function (message) {
    var index = this.messages.length;
    for (var i = 0; i < this.messages.length; i++) {
      var other = this.messages[i];
      if (other.id && other.id > message.id) {
        index = i;
        break;
      }
    }
    this.messages.splice(index, 0, message);
    this.byKey[message.key] = message;
    var before = this.messages[index + 1] || null;
    return before;
  };

  ChatClient.prototype._onMessage = function (data) {
    if (!data.id) return;
    var existing = this.byKey[data.id];
    if (!existing && data.role === "user" && data.inbound_id && this.byInbound[data.inbound_id]) {
      // One user message per inbound_id (docs/web-protocol.md, "Echo"): our optimistic copy, or
      // another tab's live echo (whose id is the inbound id), now stored under its own id.
      existing = this.byInbound[data.inbound_id];
      if (existing.id && existing.id !== existing.key) delete this.byKey[existing.id];
      existing.id = data.id;
      this.byKey[data.id] = existing;
    }
    if (existing) {
      var keepLonger = existing.status === "streaming" && data.status === "streaming" && (existing.text || "").length > (data.text || "").length && (existing.text || "").indexOf(data.text || "") === 0;
      if (!keepLonger) existing.text = data.text || "";
      existing.status = data.status || "complete";
      existing.attachments = data.attachments || existing.attachments || [];
      existing.gap = false;
      this._emit("message", existing);
      return;
    }
    var message = {
      key: data.id,
      id: data.id,
      role: data.role || "assistant",
      text: data.text || "",
      status: data.status || "complete",
      attachments: data.attachments || [],
      inbound_id: data.inbound_id || null,
      created_at: data.created_at || null,
    };
    if (message.role === "user" && message.inbound_id) this.byInbound[message.inbound_id] = message;
    var before = this._insert(message);
    if (message.role !== "user") this._emit("notify", null);
    this._emit("placed", { message: message, before: before });
  };

  ChatClient.prototype._onDelta = function (frame) {
    var message = this.byKey[frame.message_id];
    var delta = String(frame.delta || "");
    var offset = Number(frame.offset) || 0;
    if (!message) {
      if (offset !== 0) {
        this._askResume();
        return;
      }
      this._onMessage({ id: frame.message_id, role: "assistant", text: "", status: "streaming" });
      message = this.byKey[frame.message_id];
    }
    var text = message.text || "";
    this._emit("notify", null);
    if (offset > text.length) {
      message.gap = true;
      this._askResume();
      return;
    }
    if (text.length >= offset + delta.length) return; // we have this text already
    message.text = text.slice(0, offset) + delta;
    message.status = "streaming";
    this._emit("text", message);
  };

  ChatClient.prototype._askResume = function () {
    if (this.ready) this.connection.send({ type: "resume", id: newId(), after: this.resumePoint() });
  };

  ChatClient.prototype._onDone = function (frame) {
    var message = this.byKey[frame.message_id];
    if (!message) {
      this._onMessage({
        id: frame.message_id,
        role: "assistant",
        text: frame.text || "",
        status: frame.stopped ? "stopped" : "complete",
      });
      return;
    }
    message.text = typeof frame.text === "string" ? frame.text : message.text;
    message.status = frame.stopped ? "stopped" : "complete";
    message.gap = false;
    this._emit("notify", null);
    this._emit("message", message);
  };

  ChatClient.prototype._onBlock = function (frame) {
    var block = frame.block || {};
    if (!block.id) return;
    var messageId = frame.message_id || null;
    if (block.type === "session_title") {
      this._emit("title", (block.payload && block.payload.title) || "");
    }
    var known = this.blocks[block.id];
    if (known) {
      known.block = block;
      this._emit("block", known);
      return;
    }
    // A block takes the place of its stored message in the conversation's order.
    var entry = {
      key: messageId || "block:" + block.id,
      id: messageId,
      role: "block",
      block: block,
      status: "complete",
    };
    this.blocks[block.id] = entry;
    var before = null;
    if (messageId && !this.byKey[messageId]) before = this._insert(entry);
    else {
      entry.key = "block:" + block.id;
      this.messages.push(entry);
      this.byKey[entry.key] = entry;
    }
    this._emit("placed", { message: entry, before: before });
  };

  ChatClient.prototype._onError = function (frame) {
    if (frame.code === "rate_limited" && frame.id && this._retryLater(frame)) return;
    if (frame.code === "not_ready" && this.ready) {
      // The server forgot our hello (the session was deleted under this socket): say it again.
      // The frame stays in the outbox and goes again after `ready`; a session that is gone
      // answers the hello with not_found, handled below.
      this.ready = false;
      this._hello();
      return;
    }
    if (frame.id) {
      this.outbox = this.outbox.filter(function (f) {
        return f.id !== frame.id;
      });
      var local = this.byKey["local:" + frame.id];
      if (local) {
        local.status = "failed";
        local.error = frame.message || frame.code;
        this._emit("message", local);
        this._setBusy(false);
      }
    }
    if (frame.code === "not_found" && !this.ready && this.sessionId) {
      // The stored session is gone (deleted, or another user's): start a new one, taking along
      // what the user wrote that the old one never accepted.
      var unsent = this.outbox.filter(function (f) {
        return f.type === "message";
      });
      this.sessionId = null;
      storageSet(this.storagePrefix + "session", null);
      this._reset();
      for (var i = 0; i < unsent.length; i++) {
        this._addLocal({ type: "message", text: unsent[i].text, attachments: unsent[i].attachments }, unsent[i].text, []);
      }
      this._hello();
      return;
    }
    if (frame.code === "internal" && !frame.id && this.ready) {
      // The server's live forwarding failed ("send resume"): ask again, at most every few seconds.
      var now = Date.now();
      if (!this.lastInternalResume || now - this.lastInternalResume > 3000) {
        this.lastInternalResume = now;
        this._askResume();
        return;
      }
    }
    if (frame.code === "unauthorized" && this.visitorToken && !this.token) {
      // A visitor token the server no longer accepts (its secret changed): become a new visitor.
      this.visitorToken = null;
      storageSet("chatgate:" + this.gateway + ":visitor", null);
      this.connection.restart();
    }
    this._emit("error", frame);
  };

  /**
   * The gateway's limits say "not now" (rate_limited, docs/web-protocol.md): the frame stays
   * queued and goes again after `retry_after` seconds (or with the next socket's `ready`).
   * Returns false for a frame we do not hold (a stop, an unknown id).
   */
  ChatClient.prototype._retryLater = function (frame) {
    var queued = null;
    for (var i = 0; i < this.outbox.length; i++) if (this.outbox[i].id === frame.id) queued = this.outbox[i];
    if (!queued) return false;
    var seconds = Math.max(1, Math.min(3600, Number(frame.retry_after) || 5));
    var self = this;
    setTimeout(function () {
      if (self.ready && self.outbox.indexOf(queued) !== -1) self.connection.send(queued);
    }, seconds * 1000);
    this._emit("notify", { text: "Sending is paused for a moment.", detail: "Retrying in " + seconds + " s" });
    return true;
  };

  ChatClient.prototype._setBusy = function (busy) {
    if (this.busy === busy) return;
    this.busy = busy;
    this._emit("busy", busy);
  };

  /** True while a reply is streaming or a turn the user started has not ended. */
  ChatClient.prototype.isReplying = function () {
    if (this.busy) return true;
    for (var i = this.messages.length - 1; i >= 0; i--) {
      if (this.messages[i].status === "streaming") return true;
    }
    return false;
  };

  ChatGate.ChatClient = ChatClient;
  ChatGate.newId = newId;
})(window);
