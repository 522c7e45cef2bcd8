/* chatgate widget: one entry of the conversation as a row of the log (a bubble, a block, a
 * system line). build(message, ctx) is a pure function of the message; chat.js decides where the
 * row goes and when it is rebuilt. */
(function (global) {
  "use strict";

  var ChatGate = (global.ChatGate = global.ChatGate || {});
  var h = ChatGate.dom.h;

  /** What an assistant message with no text at all says (stopped before its first word, or cut
   * off by a crash); an empty complete message shows nothing. */
  var EMPTY_REPLY = { stopped: "Stopped before the reply began.", failed: "The reply was interrupted.", complete: "" };

  function formatTime(iso) {
    if (!iso) return "";
    var date = new Date(iso);
    if (isNaN(date.getTime())) return "";
    return date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }

  function link(doc, className, url) {
    var a = h(doc, "a", className);
    a.href = url;
    a.target = "_blank";
    a.rel = "noopener noreferrer";
    return a;
  }

  /** The files of a message: image thumbnails, and chips (name, size) for everything else. */
  function attachmentNodes(message, ctx) {
    var doc = ctx.doc;
    var list = h(doc, "div", "cg-files");
    (message.attachments || []).forEach(function (a) {
      var url = ChatGate.blocks.resolveUrl(a.url, ctx);
      if (url && /^image\//.test(a.content_type || "")) {
        var thumb = link(doc, "cg-file-thumb", url);
        var img = h(doc, "img");
        img.src = url;
        img.alt = a.name || "image";
        img.loading = "lazy";
        img.addEventListener("load", ctx.onMediaLoad);
        thumb.appendChild(img);
        list.appendChild(thumb);
        return;
      }
      var chip = url ? link(doc, "cg-file", url) : h(doc, "span", "cg-file");
      chip.appendChild(h(doc, "span", "cg-file-name", a.name || "file"));
      if (a.size) chip.appendChild(h(doc, "span", "cg-file-size", ChatGate.dom.formatSize(a.size)));
      list.appendChild(chip);
    });
    return list;
  }

  /** (Re)renders the Markdown of an assistant message inside its bubble. */
  function renderText(message, bubble, doc) {
    var body = bubble.querySelector(".cg-md");
    var fresh = h(doc, "div", "cg-md");
    fresh.appendChild(ChatGate.markdown.render(message.text, doc));
    if (message.status === "streaming") fresh.classList.add("cg-streaming");
    if (body) bubble.replaceChild(fresh, body);
    else bubble.insertBefore(fresh, bubble.firstChild);
  }

  function meta(message, mine, doc) {
    var line = h(doc, "div", "cg-meta");
    if (message.status === "sending") line.textContent = "Sending\u2026";
    else if (message.status === "failed" && mine) {
      line.textContent = message.error ? "Not delivered: " + message.error : "Not delivered";
      line.classList.add("cg-error-text");
    } else if (message.status === "stopped") line.textContent = "Stopped";
    else line.textContent = formatTime(message.created_at);
    return line;
  }

  function bubbleRow(message, ctx) {
    var doc = ctx.doc;
    var mine = message.role === "user";
    var row = h(doc, "div", "cg-row " + (mine ? "cg-row-user" : "cg-row-assistant"));
    var bubble = h(doc, "div", "cg-bubble " + (mine ? "cg-user" : "cg-assistant"));
    var hasFiles = !!(message.attachments && message.attachments.length);
    if (mine) {
      // The user's own words are shown exactly as typed, never as Markdown.
      if (message.text) bubble.appendChild(h(doc, "div", "cg-text", message.text));
    } else if (!message.text && EMPTY_REPLY[message.status] !== undefined) {
      bubble.classList.add("cg-empty-reply");
      bubble.appendChild(h(doc, "div", "cg-md", EMPTY_REPLY[message.status]));
      if (!EMPTY_REPLY[message.status] && !hasFiles) row.hidden = true;
    } else {
      renderText(message, bubble, doc);
    }
    if (hasFiles) bubble.appendChild(attachmentNodes(message, ctx));
    row.appendChild(bubble);
    var line = meta(message, mine, doc);
    if (line.textContent) row.appendChild(line);
    return row;
  }

  /** The row for a message: {key, id, role ("user"|"assistant"|"system"|"block"), text, status,
   * attachments, block, created_at}. ctx is the block context (doc, gateway, client...). */
  function build(message, ctx) {
    var doc = ctx.doc;
    var row;
    if (message.role === "block") {
      row = h(doc, "div", "cg-row cg-row-block");
      var element = ChatGate.blocks.render(message.block, ctx);
      if (element) row.appendChild(element);
      else row.hidden = true; // a block with no visual (a title)
    } else if (message.role === "system") {
      row = h(doc, "div", "cg-row cg-row-system");
      var system = h(doc, "div", "cg-system");
      system.appendChild(ChatGate.markdown.render(message.text, doc));
      row.appendChild(system);
    } else {
      row = bubbleRow(message, ctx);
    }
    row.setAttribute("data-key", message.key);
    row.setAttribute("data-role", message.role);
    row.setAttribute("data-status", message.status || "");
    // A reply re-renders on every frame while it streams: screen readers wait for the end.
    if (message.status === "streaming") row.setAttribute("aria-busy", "true");
    if (message.id) row.setAttribute("data-message-id", message.id);
    return row;
  }

  /** Updates a streaming row in place (cheaper than a rebuild on every frame). */
  function refreshText(row, message, doc) {
    var bubble = row.querySelector(".cg-bubble");
    if (bubble) renderText(message, bubble, doc);
    row.setAttribute("data-status", message.status || "");
    if (message.status !== "streaming") row.removeAttribute("aria-busy");
  }

  ChatGate.rows = { build: build, refreshText: refreshText };
})(window);
