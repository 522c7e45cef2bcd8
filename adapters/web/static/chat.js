/* chatgate widget: the chat view, shared by the full page (index.html) and the embed (widget.js).
 *
 * ChatGate.mount(container, options) builds the header, the conversation log, the status line
 * and the composer inside `container` (an element in the page, or in the widget's shadow root),
 * and drives them from a ChatClient. All text from the server enters through textContent or
 * the safe Markdown renderer. No innerHTML anywhere.
 */
(function (global) {
  "use strict";

  var ChatGate = (global.ChatGate = global.ChatGate || {});
  var SVG_NS = "http://www.w3.org/2000/svg";
  var EMPTY_REPLY = { stopped: "Stopped before the reply began.", failed: "The reply was interrupted.", complete: "" };
  var NEAR_BOTTOM_PX = 96; // keep following the conversation when the reader is this close to its end

  var ICONS = {
    send: "M3.4 20.4 21 12 3.4 3.6 3.4 10.1 15 12 3.4 13.9z",
    stop: "M7 7h10v10H7z",
    attach:
      "M16.5 6.5v10.1a4.5 4.5 0 0 1-9 0V5.9a3 3 0 0 1 6 0v9.8a1.5 1.5 0 0 1-3 0V6.5H9v9.2a3 3 0 0 0 6 0V5.9a4.5 4.5 0 0 0-9 0v10.7a6 6 0 0 0 12 0V6.5z",
    close: "M18.3 5.7 12 12l6.3 6.3-1.4 1.4L10.6 13.4 4.3 19.7 2.9 18.3 9.2 12 2.9 5.7 4.3 4.3l6.3 6.3 6.3-6.3z",
    compose: "M4 20h4l10.5-10.5-4-4L4 16v4zm13.7-13.3 1.6-1.6a1 1 0 0 0 0-1.4l-1.6-1.6a1 1 0 0 0-1.4 0l-1.6 1.6 3 3z",
  };

  function icon(doc, name) {
    var svg = doc.createElementNS(SVG_NS, "svg");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("aria-hidden", "true");
    svg.setAttribute("focusable", "false");
    var path = doc.createElementNS(SVG_NS, "path");
    path.setAttribute("d", ICONS[name]);
    path.setAttribute("fill", "currentColor");
    svg.appendChild(path);
    return svg;
  }

  function h(doc, tag, className, text) {
    var node = doc.createElement(tag);
    if (className) node.className = className;
    if (text != null && text !== "") node.textContent = String(text);
    return node;
  }

  function iconButton(doc, name, label, className) {
    var b = h(doc, "button", "cg-icon-btn " + (className || ""));
    b.type = "button";
    b.setAttribute("aria-label", label);
    b.title = label;
    b.appendChild(icon(doc, name));
    return b;
  }

  /** "#4f46e5"-style colours only (anything else falls back to the default accent). */
  function parseHexColor(value) {
    var m = /^#([0-9a-f]{3}|[0-9a-f]{6})$/i.exec(String(value || "").trim());
    if (!m) return null;
    var hex = m[1].length === 3 ? m[1].replace(/./g, "$&$&") : m[1];
    return "#" + hex.toLowerCase();
  }

  /** Dark or light text on the accent, whichever contrasts more (WCAG relative luminance). */
  function textOn(hex) {
    var channels = [1, 3, 5].map(function (i) {
      var c = parseInt(hex.substr(i, 2), 16) / 255;
      return c <= 0.03928 ? c / 12.92 : Math.pow((c + 0.055) / 1.055, 2.4);
    });
    var luminance = 0.2126 * channels[0] + 0.7152 * channels[1] + 0.0722 * channels[2];
    return luminance > 0.45 ? "#111827" : "#ffffff";
  }

  function applyAccent(root, accent) {
    var hex = parseHexColor(accent);
    if (!hex) return;
    var on = textOn(hex);
    root.style.setProperty("--cg-accent", hex);
    root.style.setProperty("--cg-on-accent", on);
    root.style.setProperty("--cg-accent-text", on === "#ffffff" ? hex : "#111827");
  }

  function formatTime(iso) {
    if (!iso) return "";
    var date = new Date(iso);
    if (isNaN(date.getTime())) return "";
    return date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }

  /** The upload and frame limits from GET /api/widget/config, so the composer can say no early. */
  function readLimits(config) {
    var types = Array.isArray(config.accepted_types) ? config.accepted_types : [];
    var accept = types.indexOf("*/*") === -1 ? types.join(",") : "";
    return {
      maxUploadBytes: Number(config.max_upload_bytes) || 0,
      maxFrameBytes: Number(config.max_frame_bytes) || 0,
      accept: accept,
    };
  }

  /**
   * Mounts a chat into `container`.
   * options: gateway, token, handler, title, accent, mode ("page" | "widget"), onClose(),
   *          onUnread(count), reconnectDelay, reconnectMaxDelay, greeting,
   *          config (the GET /api/widget/config answer: upload and frame limits)
   * Returns {client, focus(), setVisible(visible), root}.
   */
  function mount(container, options) {
    options = options || {};
    var doc = container.ownerDocument || global.document;
    var client = new ChatGate.ChatClient(options);
    var appTitle = options.title || "Chat";
    var visible = options.mode !== "widget";
    var unread = 0;
    var uploads = {}; // block id -> running upload state (see blocks.js)
    var rows = {}; // message key -> row element
    var dirty = {}; // message key -> true while a text re-render is scheduled
    var frameRequested = false;
    var pendingFiles = []; // attachments for the next message
    var limits = readLimits(options.config || {});

    // ---------------------------------------------------------------- structure
    var root = h(doc, "div", "cg-chat cg-mode-" + (options.mode || "page"));
    root.setAttribute("role", "region");
    root.setAttribute("aria-label", appTitle);
    applyAccent(root, options.accent);

    var header = h(doc, "header", "cg-header");
    var avatar = h(doc, "div", "cg-avatar", (appTitle.trim()[0] || "C").toUpperCase());
    avatar.setAttribute("aria-hidden", "true");
    var heading = h(doc, "div", "cg-heading");
    var titleEl = h(doc, options.mode === "widget" ? "h2" : "h1", "cg-title", appTitle);
    titleEl.id = "cg-title-" + ChatGate.newId().slice(0, 8);
    var subtitle = h(doc, "div", "cg-subtitle");
    var dot = h(doc, "span", "cg-dot");
    dot.setAttribute("aria-hidden", "true");
    var subtitleText = h(doc, "span", "cg-subtitle-text", "Connecting\u2026");
    subtitle.appendChild(dot);
    subtitle.appendChild(subtitleText);
    heading.appendChild(titleEl);
    heading.appendChild(subtitle);
    var newButton = iconButton(doc, "compose", "New conversation", "cg-new");
    header.appendChild(avatar);
    header.appendChild(heading);
    header.appendChild(newButton);
    var closeButton = null;
    if (options.mode === "widget") {
      closeButton = iconButton(doc, "close", "Close chat", "cg-close");
      header.appendChild(closeButton);
    }

    var log = h(doc, "div", "cg-log");
    log.setAttribute("role", "log");
    log.setAttribute("aria-live", "polite");
    log.setAttribute("aria-relevant", "additions");
    log.setAttribute("aria-label", "Conversation");
    log.tabIndex = 0;
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

    var composer = h(doc, "form", "cg-composer");
    composer.setAttribute("aria-label", "Send a message");
    composer.noValidate = true;
    var attachmentList = h(doc, "div", "cg-attachments");
    attachmentList.hidden = true;
    var inputRow = h(doc, "div", "cg-input-row");
    var attachButton = iconButton(doc, "attach", "Attach a file", "cg-attach");
    var fileInput = h(doc, "input", "cg-file-input");
    fileInput.type = "file";
    fileInput.multiple = true;
    if (limits.accept) fileInput.accept = limits.accept;
    fileInput.tabIndex = -1;
    fileInput.setAttribute("aria-hidden", "true");
    var input = h(doc, "textarea", "cg-input");
    input.rows = 1;
    input.placeholder = "Write a message\u2026";
    input.setAttribute("aria-label", "Message");
    input.setAttribute("enterkeyhint", "send");
    var sendButton = iconButton(doc, "send", "Send message", "cg-send");
    sendButton.type = "submit";
    var stopButton = iconButton(doc, "stop", "Stop generating", "cg-stop");
    stopButton.hidden = true;
    inputRow.appendChild(attachButton);
    inputRow.appendChild(input);
    inputRow.appendChild(sendButton);
    inputRow.appendChild(stopButton);
    composer.appendChild(attachmentList);
    composer.appendChild(inputRow);
    composer.appendChild(fileInput);
    var hint = h(doc, "div", "cg-composer-hint", "Enter to send \u00b7 Shift+Enter for a new line");
    hint.setAttribute("aria-hidden", "true");
    composer.appendChild(hint);

    root.appendChild(header);
    root.appendChild(log);
    root.appendChild(statusLine);
    root.appendChild(composer);
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

    // ---------------------------------------------------------------- rendering
    var blockContext = {
      doc: doc,
      client: client,
      uploads: uploads,
      limits: limits,
      gateway: client.gateway,
      pressSuggestion: function (blockId, index, prompt) {
        client.pressSuggestion(blockId, index, prompt);
        input.focus();
      },
      onMediaLoad: function () {
        if (nearBottom()) scrollToEnd();
      },
    };

    function attachmentNodes(message) {
      var list = h(doc, "div", "cg-files");
      (message.attachments || []).forEach(function (a) {
        var url = ChatGate.blocks.resolveUrl(a.url, blockContext);
        var isImage = /^image\//.test(a.content_type || "") && url;
        if (isImage) {
          var link = h(doc, "a", "cg-file-thumb");
          link.href = url;
          link.target = "_blank";
          link.rel = "noopener noreferrer";
          var img = h(doc, "img");
          img.src = url;
          img.alt = a.name || "image";
          img.loading = "lazy";
          img.addEventListener("load", blockContext.onMediaLoad);
          link.appendChild(img);
          list.appendChild(link);
          return;
        }
        var chip = h(doc, url ? "a" : "span", "cg-file");
        if (url) {
          chip.href = url;
          chip.target = "_blank";
          chip.rel = "noopener noreferrer";
        }
        chip.appendChild(h(doc, "span", "cg-file-name", a.name || "file"));
        if (a.size) chip.appendChild(h(doc, "span", "cg-file-size", ChatGate.blocks.formatSize(a.size)));
        list.appendChild(chip);
      });
      return list;
    }

    function renderText(message, bubble) {
      var body = bubble.querySelector(".cg-md");
      var fresh = h(doc, "div", "cg-md");
      fresh.appendChild(ChatGate.markdown.render(message.text, doc));
      if (message.status === "streaming") fresh.classList.add("cg-streaming");
      if (body) bubble.replaceChild(fresh, body);
      else bubble.insertBefore(fresh, bubble.firstChild);
    }

    function buildRow(message) {
      var row;
      if (message.role === "block") {
        var element = ChatGate.blocks.render(message.block, blockContext);
        row = h(doc, "div", "cg-row cg-row-block");
        if (element) row.appendChild(element);
        else row.hidden = true;
      } else if (message.role === "system") {
        row = h(doc, "div", "cg-row cg-row-system");
        var system = h(doc, "div", "cg-system");
        system.appendChild(ChatGate.markdown.render(message.text, doc));
        row.appendChild(system);
      } else {
        var mine = message.role === "user";
        row = h(doc, "div", "cg-row " + (mine ? "cg-row-user" : "cg-row-assistant"));
        var bubble = h(doc, "div", "cg-bubble " + (mine ? "cg-user" : "cg-assistant"));
        if (mine) {
          if (message.text) bubble.appendChild(h(doc, "div", "cg-text", message.text));
        } else if (!message.text && EMPTY_REPLY[message.status] !== undefined) {
          // A reply with no text at all: stopped before its first word, or cut off by a crash.
          bubble.classList.add("cg-empty-reply");
          bubble.appendChild(h(doc, "div", "cg-md", EMPTY_REPLY[message.status]));
          if (!EMPTY_REPLY[message.status] && !(message.attachments || []).length) row.hidden = true;
        } else {
          renderText(message, bubble);
        }
        if (message.attachments && message.attachments.length) bubble.appendChild(attachmentNodes(message));
        row.appendChild(bubble);
        var meta = h(doc, "div", "cg-meta");
        if (message.status === "sending") meta.textContent = "Sending\u2026";
        else if (message.status === "failed" && mine) {
          meta.textContent = message.error ? "Not delivered: " + message.error : "Not delivered";
          meta.classList.add("cg-error-text");
        } else if (message.status === "stopped") meta.textContent = "Stopped";
        else meta.textContent = formatTime(message.created_at);
        if (meta.textContent) row.appendChild(meta);
      }
      row.setAttribute("data-key", message.key);
      row.setAttribute("data-role", message.role);
      row.setAttribute("data-status", message.status || "");
      // A reply re-renders on every frame while it streams: screen readers wait for the end.
      if (message.status === "streaming") row.setAttribute("aria-busy", "true");
      if (message.id) row.setAttribute("data-message-id", message.id);
      return row;
    }

    function place(message, before) {
      var row = buildRow(message);
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

    function rerender(message) {
      var old = rows[message.key];
      if (!old) return place(message, null);
      var row = buildRow(message);
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
          var row = rows[key];
          if (!message || !row) return;
          var bubble = row.querySelector(".cg-bubble");
          if (bubble) renderText(message, bubble);
          row.setAttribute("data-status", message.status || "");
          if (message.status !== "streaming") row.removeAttribute("aria-busy");
        });
      });
      refreshControls();
    }

    function refreshControls() {
      var replying = client.isReplying();
      stopButton.hidden = !replying;
      sendButton.hidden = replying && !input.value.trim();
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

    // ---------------------------------------------------------------- client events
    client.on("placed", function (event) {
      place(event.message, event.before);
      refreshControls();
    });
    client.on("message", function (message) {
      delete dirty[message.key];
      rerender(message);
      refreshControls();
    });
    client.on("text", function (message) {
      dirty[message.key] = true;
      if (!frameRequested) {
        frameRequested = true;
        // One re-render per animation frame however fast the deltas come; a hidden tab gets
        // no animation frames, so fall back to a timer there.
        if (doc.hidden) setTimeout(flushText, 50);
        else global.requestAnimationFrame(flushText);
      }
    });
    client.on("block", function (entry) {
      rerender(entry);
      refreshControls();
    });
    client.on("remove", function (message) {
      var row = rows[message.key];
      if (row && row.parentNode) row.parentNode.removeChild(row);
      delete rows[message.key];
    });
    client.on("reset", function () {
      Object.keys(rows).forEach(function (key) {
        var row = rows[key];
        if (row.parentNode) row.parentNode.removeChild(row);
      });
      rows = {};
      dirty = {};
      empty.hidden = false;
      setSessionTitle("");
      showStatus(null);
      refreshControls();
    });
    client.on("busy", refreshControls);
    client.on("notify", function (note) {
      showStatus(note);
    });
    client.on("turn_end", function (frame) {
      if (frame && frame.error && frame.error !== "stopped") {
        showStatus({ text: frame.error === "timeout" ? "The reply took too long." : "Something went wrong.", detail: "", error: true });
      }
      refreshControls();
    });
    client.on("title", setSessionTitle);
    client.on("ready", function (frame) {
      if (statusLine.classList.contains("cg-status-error")) showStatus(null); // e.g. "signed out", now fixed
      if (frame.title) setSessionTitle(frame.title);
      refreshControls();
    });
    client.on("connection", function (event) {
      var labels = {
        connecting: "Connecting\u2026",
        open: "Online",
        waiting: "Reconnecting\u2026",
        unauthorized: "Signed out",
        closed: "Offline",
      };
      root.setAttribute("data-connection", event.state);
      if (!sessionTitle) subtitleText.textContent = labels[event.state] || "";
      dot.className = "cg-dot cg-dot-" + event.state;
      dot.title = labels[event.state] || "";
    });
    client.on("error", function (frame) {
      if (frame.id && client.byKey["local:" + frame.id]) return; // shown on the message itself
      if (frame.code === "unauthorized") {
        showStatus({ text: "Your sign-in has expired.", detail: "Reload the page to continue.", error: true });
        return;
      }
      showStatus({ text: frame.message || "Something went wrong.", detail: "", error: true });
    });

    var sessionTitle = "";
    function setSessionTitle(title) {
      sessionTitle = String(title || "");
      subtitleText.textContent = sessionTitle || (client.connection.state === "open" ? "Online" : subtitleText.textContent);
      if (options.mode === "page") doc.title = sessionTitle ? sessionTitle + " \u00b7 " + appTitle : appTitle;
    }

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

    // ---------------------------------------------------------------- composer
    function autosize() {
      input.style.height = "auto";
      input.style.height = Math.min(input.scrollHeight, 160) + "px";
    }

    function renderPendingFiles() {
      while (attachmentList.firstChild) attachmentList.removeChild(attachmentList.firstChild);
      pendingFiles.forEach(function (entry) {
        var chip = h(doc, "span", "cg-file cg-pending-file" + (entry.error ? " cg-file-error" : ""));
        chip.appendChild(h(doc, "span", "cg-file-name", entry.file.name));
        var note = entry.error ? entry.error : entry.uploaded ? ChatGate.blocks.formatSize(entry.file.size) : Math.round(entry.progress * 100) + "%";
        chip.appendChild(h(doc, "span", "cg-file-size", note));
        var remove = h(doc, "button", "cg-file-remove", "\u00d7");
        remove.type = "button";
        remove.setAttribute("aria-label", "Remove " + entry.file.name);
        remove.addEventListener("click", function () {
          pendingFiles = pendingFiles.filter(function (e) {
            return e !== entry;
          });
          renderPendingFiles();
          input.focus();
        });
        chip.appendChild(remove);
        attachmentList.appendChild(chip);
      });
      attachmentList.hidden = pendingFiles.length === 0;
    }

    function attach(file) {
      var entry = { file: file, progress: 0, uploaded: null, error: "" };
      pendingFiles.push(entry);
      if (limits.maxUploadBytes && file.size > limits.maxUploadBytes) {
        entry.error = "too large (max " + ChatGate.blocks.formatSize(limits.maxUploadBytes) + ")";
        renderPendingFiles();
        return;
      }
      renderPendingFiles();
      client
        .upload(file, function (fraction) {
          entry.progress = fraction;
          renderPendingFiles();
        })
        .then(function (uploaded) {
          entry.uploaded = uploaded;
          renderPendingFiles();
        })
        .catch(function (error) {
          entry.error = error.message || "Upload failed";
          renderPendingFiles();
        });
    }

    function tooLong(text) {
      if (!limits.maxFrameBytes) return false;
      var frame = JSON.stringify({ type: "message", id: ChatGate.newId(), text: text, attachments: [] });
      return new Blob([frame]).size > limits.maxFrameBytes - 512; // room for the attachment ids
    }

    function submit() {
      var text = input.value.replace(/^\s+|\s+$/g, "");
      if (pendingFiles.some(function (e) { return !e.uploaded && !e.error; })) {
        showStatus({ text: "Waiting for the upload to finish\u2026", detail: "", error: true });
        return;
      }
      var files = pendingFiles
        .filter(function (e) {
          return e.uploaded;
        })
        .map(function (e) {
          return e.uploaded;
        });
      if (!text && !files.length) return;
      if (tooLong(text)) {
        showStatus({ text: "That message is too long to send.", detail: "Shorten it or attach it as a file.", error: true });
        return;
      }
      client.sendMessage(text, files);
      input.value = "";
      pendingFiles = [];
      renderPendingFiles();
      autosize();
      scrollToEnd();
      refreshControls();
    }

    composer.addEventListener("submit", function (event) {
      event.preventDefault();
      submit();
      input.focus();
    });
    input.addEventListener("keydown", function (event) {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing && event.keyCode !== 229) {
        event.preventDefault();
        submit();
      }
    });
    input.addEventListener("input", function () {
      autosize();
      refreshControls();
    });
    input.addEventListener("paste", function (event) {
      var files = event.clipboardData && event.clipboardData.files;
      if (files && files.length) {
        event.preventDefault();
        for (var i = 0; i < files.length; i++) attach(files[i]);
      }
    });
    attachButton.addEventListener("click", function () {
      fileInput.click();
    });
    fileInput.addEventListener("change", function () {
      for (var i = 0; i < fileInput.files.length; i++) attach(fileInput.files[i]);
      fileInput.value = "";
      input.focus();
    });
    stopButton.addEventListener("click", function () {
      client.stopReply();
      input.focus();
    });
    newButton.addEventListener("click", function () {
      client.newConversation();
      input.focus();
    });
    if (closeButton) {
      closeButton.addEventListener("click", function () {
        if (options.onClose) options.onClose();
      });
    }
    root.addEventListener("keydown", function (event) {
      if (event.key === "Escape" && options.mode === "widget" && options.onClose) {
        event.stopPropagation();
        options.onClose();
      }
    });

    client.start();
    if (options.mode !== "widget") input.focus();

    return {
      client: client,
      root: root,
      focus: function () {
        input.focus();
      },
      setTitle: function (title) {
        appTitle = title || appTitle;
        titleEl.textContent = appTitle;
        root.setAttribute("aria-label", appTitle);
        avatar.textContent = (appTitle.trim()[0] || "C").toUpperCase();
      },
      setToken: function (token) {
        client.setToken(token);
      },
      setAccent: function (accent) {
        applyAccent(root, accent);
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
  ChatGate.parseHexColor = parseHexColor;
})(window);
