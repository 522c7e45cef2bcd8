/* chatgate widget: one WebSocket that comes back by itself.
 *
 * Reconnects with exponential backoff and jitter after any close (a server restart, a network
 * change), at once when the browser comes back online or the tab becomes visible again or the
 * server cut the socket off for falling behind (close code 4408: the hello that follows replays
 * what was lost), and never after the server refused the identity (close code 4401). What to say
 * on a fresh socket (hello, re-sending unacknowledged frames) is the caller's business: client.js.
 */
(function (global) {
  "use strict";

  var CLOSE_UNAUTHORIZED = 4401; // docs/web-protocol.md: a forged or expired identity token
  var CLOSE_FELL_BEHIND = 4408; // docs/web-protocol.md: frames were lost; reconnect now and resume

  /**
   * @param {object} options
   *   url(): the ws:// or wss:// URL to open (called on every attempt, so it may change)
   *   onOpen(), onFrame(frame), onState(state, detail): callbacks
   *   baseDelay, maxDelay: backoff bounds in milliseconds
   */
  function Connection(options) {
    this.options = options;
    this.socket = null;
    this.state = "idle";
    this.attempt = 0;
    this.retryTimer = null;
    this.stopped = false;
    var self = this;
    this._wake = function () {
      if (self.state === "waiting") self._connectNow();
    };
    this._onVisible = function () {
      if (!global.document.hidden) self._wake();
    };
  }

  Connection.prototype.start = function () {
    this.stopped = false;
    global.addEventListener("online", this._wake);
    global.document.addEventListener("visibilitychange", this._onVisible);
    this._connectNow();
  };

  Connection.prototype.stop = function () {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    global.removeEventListener("online", this._wake);
    global.document.removeEventListener("visibilitychange", this._onVisible);
    if (this.socket) this.socket.close(1000, "bye");
    this._setState("closed");
  };

  /** Closes the current socket and opens a new one at once (e.g. after switching session). */
  Connection.prototype.restart = function () {
    this.attempt = 0;
    if (this.socket) {
      var old = this.socket;
      this.socket = null;
      old.onclose = old.onmessage = old.onerror = old.onopen = null;
      old.close(1000, "restart");
    }
    this._connectNow();
  };

  Connection.prototype.isOpen = function () {
    return !!this.socket && this.socket.readyState === 1 && this.state === "open";
  };

  /** Sends a frame when the socket is open; returns whether it went out. */
  Connection.prototype.send = function (frame) {
    if (!this.isOpen()) return false;
    try {
      this.socket.send(JSON.stringify(frame));
      return true;
    } catch (e) {
      return false;
    }
  };

  Connection.prototype._setState = function (state, detail) {
    this.state = state;
    if (this.options.onState) this.options.onState(state, detail);
  };

  Connection.prototype._connectNow = function () {
    if (this.stopped) return;
    clearTimeout(this.retryTimer);
    var self = this;
    var socket;
    this._setState("connecting");
    try {
      socket = new WebSocket(this.options.url());
    } catch (e) {
      this._scheduleRetry();
      return;
    }
    this.socket = socket;
    socket.onopen = function () {
      if (self.socket !== socket) return;
      self.attempt = 0;
      self._setState("open");
      if (self.options.onOpen) self.options.onOpen();
    };
    socket.onmessage = function (event) {
      if (self.socket !== socket) return;
      var frame;
      try {
        frame = JSON.parse(event.data);
      } catch (e) {
        return; // not ours to interpret; the protocol only sends JSON text frames
      }
      if (frame && typeof frame === "object") self.options.onFrame(frame);
    };
    socket.onclose = function (event) {
      if (self.socket !== socket) return;
      self.socket = null;
      if (self.stopped) return;
      if (event.code === CLOSE_UNAUTHORIZED) {
        self._setState("unauthorized");
        return;
      }
      if (event.code === CLOSE_FELL_BEHIND) {
        // Not a failure of the network or the server: the hello that follows replays the gap.
        self.attempt = 0;
        self._connectNow();
        return;
      }
      self._scheduleRetry();
    };
    socket.onerror = function () {
      /* onclose follows and schedules the retry */
    };
  };

  Connection.prototype._scheduleRetry = function () {
    var base = this.options.baseDelay || 500;
    var max = this.options.maxDelay || 15000;
    var delay = Math.min(max, base * Math.pow(2, this.attempt));
    delay = delay / 2 + Math.random() * (delay / 2); // jitter: many tabs must not reconnect in step
    this.attempt += 1;
    this._setState("waiting", { delay: delay, attempt: this.attempt });
    var self = this;
    this.retryTimer = setTimeout(function () {
      self._connectNow();
    }, delay);
  };

  var ChatGate = (global.ChatGate = global.ChatGate || {});
  ChatGate.Connection = Connection;
})(window);
