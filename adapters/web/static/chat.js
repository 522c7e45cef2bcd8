/* chatgate widget: the chat view, shared by the full page (index.html) and the embed (widget.js).
 *
 * ChatGate.mount(container, options) builds the header, the conversation log, the status line
 * and the composer inside `container` (an element in the page, or in the widget's shadow root),
 * and keeps them in step with a ChatClient: rows (rows.js) go into the log in the client's
 * order, streaming text re-renders once per animation frame, the log follows the conversation
 * while the reader is at its end. No innerHTML anywhere.
 */
(function (global) {
  "use strict";

  var ChatGate = (global.ChatGate = global.ChatGate || {});
  var h = ChatGate.dom.h;
  var NEAR_BOTTOM_PX = 96; // keep following the conversation when the reader is this close to its end
  var CONNECTION_LABELS = {
    connecting: "Connecting\u2026",
    open: "Online",
    waiting: "Reconnecting\u2026",
    unauthorized: "Signed out",
    closed: "Offline",
  };

  function initial(title) {
    return (String(title).trim()[0] || "C").toUpperCase();
  }

  /**
   * Mounts a chat into `container`.
   * options: gateway, token, refreshToken, handler, title, accent, mode ("page" | "widget"),
   *          greeting, onClose(), onUnread(count), reconnectDelay, reconnectMaxDelay,
   *          config (the GET /api/widget/config answer: upload and frame limits)
   * Returns {client, root, focus(), setTitle(t), setToken(t), setAccent(c), setVisible(v)}.
   */
  function mount(container, options) {
    options = options || {};
    var doc = container.ownerDocument || global.document;
    var client = new ChatGate.ChatClient(options);
    var appTitle = options.title || "Chat";
    var sessionTitle = "";
    var visible = options.mode !== "widget";
    var unread = 0;
    var rows = {}; // message key -> row element
    var dirty = {}; // message key -> true while a text re-render is scheduled
    var frameRequested = false;

    // ---------------------------------------------------------------- structure
    var root = h(doc, "div", "cg-chat cg-mode-" + (options.mode || "page"));
    root.setAttribute("role", "region");
    root.setAttribute("aria-label", appTitle);
    ChatGate.dom.applyAccent(root, options.accent);

    var header = h(doc, "header", "cg-header");
    var avatar = h(doc, "div", "cg-avatar", initial(appTitle));
    avatar.setAttribute("aria-hidden", "true");
    var heading = h(doc, "div", "cg-heading");
    var titleEl = h(doc, options.mode === "widget" ? "h2" : "h1", "cg-title", appTitle);
    var subtitle = h(doc, "div", "cg-subtitle");
    var dot = h(doc, "span", "cg-dot");
    dot.setAttribute("aria-hidden", "true");
    var subtitleText = h(doc, "span", "cg-subtitle-text", CONNECTION_LABELS.connecting);
    subtitle.appendChild(dot);
    subtitle.appendChild(subtitleText);
    heading.appendChild(titleEl);
    heading.appendChild(subtitle);
    var newButton = ChatGate.dom.iconButton(doc, "compose", "New conversation", "cg-new");
    header.appendChild(avatar);
    header.appendChild(heading);
    header.appendChild(newButton);
    if (options.mode === "widget") {
      var closeButton = ChatGate.dom.iconButton(doc, "close", "Close chat", "cg-close");
      closeButton.addEventListener("click", function () {
        if (options.onClose) options.onClose();
      });
      header.appendChild(closeButton);
    }

    var log = h(doc, "div", "cg-log");
    log.setAttribute("role", "log");
    log.setAttribute("aria-live", "polite");
    log.setAttribute("aria-relevant", "additions");
    log.setAttribute("aria-label", "Conversation");
    log.tabIndex = 0; // scrollable by keyboard
    var empty = h(doc, "div", "cg-empty");
    empty.appendChild(h(doc, "div", "cg-empty-title", options.greeting || "Hi! How can I help?"));
    empty.appendChild(h(doc, "div", "cg-empty-text", "Ask a question to start the conversation."));
    var typing = h(doc, "div", "cg-row cg-row-assistant cg-typing-row");
    var typingBubble = h(doc, "div", "cg-bubble cg-assistant cg-typing");
    typingBubble.setAttribute("aria-hidden", "true"); // the status line and the reply speak instead
    for (var d = 0; d < 3; d++) typingBubble.appendChild(h(doc, "span", "cg-typing-dot"));
    typing.appendChild(typingBubble);
    typing.hidden = true;
    log.appendChild(empty);
    log.appendChild(typing);

    var statusLine = h(doc, "div", "cg-status");
    statusLine.setAttribute("role", "status");
    statusLine.setAttribute("aria-live", "polite");
    statusLine.hidden = true;

    var limits = ChatGate.readLimits(options.config || {});
    var composer = ChatGate.Composer(doc, {
      client: client,
      limits: limits,
      showStatus: showStatus,
      onSent: function () {
        scrollToEnd();
        refreshControls();
      },
    });

    root.appendChild(header);
    root.appendChild(log);
    root.appendChild(statusLine);
    root.appendChild(composer.element);
    container.appendChild(root);

    // ---------------------------------------------------------------- scrolling
    function nearBottom() {
      return log.scrollHeight - log.scrollTop - log.clientHeight < NEAR_BOTTOM_PX;
    }

    function scrollToEnd() {
      log.scrollTop = log.scrollHeight;
    }

    /**
     * Runs a DOM change and keeps following the conversation if the reader was at its end.
     * Measures once per animation frame and scrolls in the frame, so a replay of hundreds of
     * messages costs one layout, not one per message.
     */
    var frameFollow = null; // whether to follow, measured before this frame's first change
    function keepingScroll(fn) {
      if (frameFollow === null) {
        frameFollow = nearBottom();
        global.requestAnimationFrame(function () {
          var follow = frameFollow;
          frameFollow = null;
          if (follow) scrollToEnd();
        });
      }
      fn();
    }

    // ---------------------------------------------------------------- rows
    var rowContext = {
      doc: doc,
      client: client,
      uploads: {}, // block id -> running upload state (blocks.js)
      limits: limits,
      gateway: client.gateway,
      pressSuggestion: function (blockId, index, prompt) {
        client.pressSuggestion(blockId, index, prompt);
        composer.focus();
      },
      onMediaLoad: function () {
        if (nearBottom()) scrollToEnd();
      },
    };

    function place(message, before) {
      var row = ChatGate.rows.build(message, rowContext);
      rows[message.key] = row;
      var anchor = (before && rows[before.key]) || typing;
      keepingScroll(function () {
        log.insertBefore(row, anchor);
        empty.hidden = true;
      });
      if (!visible && message.role === "assistant") {
        unread += 1;
        if (options.onUnread) options.onUnread(unread);
      }
    }

    function rebuild(message) {
      var old = rows[message.key];
      if (!old) return place(message, null);
      var row = ChatGate.rows.build(message, rowContext);
      rows[message.key] = row;
      keepingScroll(function () {
        old.parentNode.replaceChild(row, old);
      });
    }

    function flushText() {
      frameRequested = false;
      keepingScroll(function () {
        Object.keys(dirty).forEach(function (key) {
          delete dirty[key];
          var message = client.byKey[key];
          if (message && rows[key]) ChatGate.rows.refreshText(rows[key], message, doc);
        });
      });
      refreshControls();
    }

    function refreshControls() {
      composer.refresh();
      var streaming = client.messages.some(function (m) {
        return m.status === "streaming";
      });
      var last = client.messages[client.messages.length - 1];
      var waitingOnUser = !!(last && last.role === "block" && ChatGate.blocks.awaitsUser(last.block));
      var showTyping = client.busy && !streaming && !waitingOnUser && statusLine.hidden;
      if (typing.hidden === showTyping) {
        keepingScroll(function () {
          typing.hidden = !showTyping;
        });
      }
    }

    // ---------------------------------------------------------------- header & status
    function setSessionTitle(title) {
      sessionTitle = String(title || "");
      subtitleText.textContent = sessionTitle || CONNECTION_LABELS[client.connection.state] || "";
      if (options.mode === "page") doc.title = sessionTitle ? sessionTitle + " \u00b7 " + appTitle : appTitle;
    }

    /** The transient status line: a notify() from the app, or a complaint of ours (error). */
    function showStatus(note) {
      while (statusLine.firstChild) statusLine.removeChild(statusLine.firstChild);
      var show = !!(note && (note.text || note.detail));
      statusLine.classList.toggle("cg-status-error", !!(note && note.error));
      if (show) {
        if (!note.error) statusLine.appendChild(h(doc, "span", "cg-spinner"));
        statusLine.appendChild(h(doc, "span", "cg-status-text", note.text));
        if (note.detail) statusLine.appendChild(h(doc, "span", "cg-detail", note.detail));
      }
      statusLine.hidden = !show;
      refreshControls();
    }

    // ---------------------------------------------------------------- client events
    client.on("placed", function (event) {
      place(event.message, event.before);
      refreshControls();
    });
    client.on("message", function (message) {
      delete dirty[message.key];
      rebuild(message);
      refreshControls();
    });
    client.on("text", function (message) {
      dirty[message.key] = true;
      if (frameRequested) return;
      frameRequested = true;
      // One re-render per animation frame however fast the deltas come; a hidden tab gets no
      // animation frames, so it uses a timer.
      if (doc.hidden) setTimeout(flushText, 50);
      else global.requestAnimationFrame(flushText);
    });
    client.on("block", function (entry) {
      rebuild(entry);
      refreshControls();
    });
    client.on("remove", function (message) {
      var row = rows[message.key];
      if (row && row.parentNode) row.parentNode.removeChild(row);
      delete rows[message.key];
    });
    client.on("reset", function () {
      Object.keys(rows).forEach(function (key) {
        if (rows[key].parentNode) rows[key].parentNode.removeChild(rows[key]);
      });
      rows = {};
      dirty = {};
      empty.hidden = false;
      setSessionTitle("");
      showStatus(null);
    });
    client.on("busy", refreshControls);
    client.on("notify", showStatus);
    // A failed turn (turn_end.error) needs no words of ours: the gateway sends the user its
    // configured apology (dispatch.error_message / timeout_message) as a message.
    client.on("turn_end", refreshControls);
    client.on("title", setSessionTitle);
    client.on("ready", function (frame) {
      if (statusLine.classList.contains("cg-status-error")) showStatus(null); // e.g. "signed out", now fixed
      if (frame.title) setSessionTitle(frame.title);
      refreshControls();
    });
    client.on("connection", function (event) {
      var label = CONNECTION_LABELS[event.state] || "";
      root.setAttribute("data-connection", event.state);
      if (!sessionTitle) subtitleText.textContent = label;
      dot.className = "cg-dot cg-dot-" + event.state;
      dot.title = label;
    });
    client.on("error", function (frame) {
      if (frame.id && client.byKey["local:" + frame.id]) return; // shown on the message itself
      if (frame.code === "unauthorized") {
        showStatus({ text: "Your sign-in has expired.", detail: "Reload the page to continue.", error: true });
        return;
      }
      showStatus({ text: frame.message || "Something went wrong.", detail: "", error: true });
    });

    newButton.addEventListener("click", function () {
      client.newConversation();
      composer.focus();
    });
    root.addEventListener("keydown", function (event) {
      if (event.key === "Escape" && options.mode === "widget" && options.onClose) {
        event.stopPropagation();
        options.onClose();
      }
    });

    client.start();
    if (options.mode !== "widget") composer.focus();

    return {
      client: client,
      root: root,
      focus: composer.focus,
      setTitle: function (title) {
        appTitle = title || appTitle;
        titleEl.textContent = appTitle;
        root.setAttribute("aria-label", appTitle);
        avatar.textContent = initial(appTitle);
      },
      setToken: function (token) {
        client.setToken(token);
      },
      setAccent: function (accent) {
        ChatGate.dom.applyAccent(root, accent);
      },
      setVisible: function (isVisible) {
        visible = isVisible;
        if (visible) {
          unread = 0;
          if (options.onUnread) options.onUnread(0);
          scrollToEnd();
        }
      },
    };
  }

  ChatGate.mount = mount;
})(window);
