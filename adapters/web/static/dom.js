/* chatgate widget: the few DOM helpers every view module uses (elements, icons, sizes).
 * Text always goes in through textContent; SVG icons are built node by node from constant paths. */
(function (global) {
  "use strict";

  var ChatGate = (global.ChatGate = global.ChatGate || {});
  var SVG_NS = "http://www.w3.org/2000/svg";

  var ICONS = {
    send: "M3.4 20.4 21 12 3.4 3.6 3.4 10.1 15 12 3.4 13.9z",
    stop: "M7 7h10v10H7z",
    attach:
      "M16.5 6.5v10.1a4.5 4.5 0 0 1-9 0V5.9a3 3 0 0 1 6 0v9.8a1.5 1.5 0 0 1-3 0V6.5H9v9.2a3 3 0 0 0 6 0V5.9a4.5 4.5 0 0 0-9 0v10.7a6 6 0 0 0 12 0V6.5z",
    close: "M18.3 5.7 12 12l6.3 6.3-1.4 1.4L10.6 13.4 4.3 19.7 2.9 18.3 9.2 12 2.9 5.7 4.3 4.3l6.3 6.3 6.3-6.3z",
    compose: "M4 20h4l10.5-10.5-4-4L4 16v4zm13.7-13.3 1.6-1.6a1 1 0 0 0 0-1.4l-1.6-1.6a1 1 0 0 0-1.4 0l-1.6 1.6 3 3z",
    chat: "M12 3C6.5 3 2 6.8 2 11.5c0 2.4 1.2 4.6 3.1 6.1L4.4 21l4-1.9c1.1.3 2.3.5 3.6.5 5.5 0 10-3.8 10-8.5S17.5 3 12 3z",
  };

  /** An element with a class and (optional) text. */
  function h(doc, tag, className, text) {
    var node = doc.createElement(tag);
    if (className) node.className = className;
    if (text != null && text !== "") node.textContent = String(text);
    return node;
  }

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

  /** A labelled button showing only an icon (the label is its accessible name and tooltip). */
  function iconButton(doc, name, label, className) {
    var b = h(doc, "button", "cg-icon-btn " + (className || ""));
    b.type = "button";
    b.setAttribute("aria-label", label);
    b.title = label;
    b.appendChild(icon(doc, name));
    return b;
  }

  function formatSize(bytes) {
    var n = Number(bytes) || 0;
    if (n < 1024) return n + " B";
    if (n < 1024 * 1024) return (n / 1024).toFixed(n < 10240 ? 1 : 0) + " KB";
    return (n / (1024 * 1024)).toFixed(1) + " MB";
  }

  /** "#4f46e5"-style colours only; anything else gives null (and the default accent stays). */
  function parseHexColor(value) {
    var m = /^#([0-9a-f]{3}|[0-9a-f]{6})$/i.exec(String(value || "").trim());
    if (!m) return null;
    var hex = m[1].length === 3 ? m[1].replace(/./g, "$&$&") : m[1];
    return "#" + hex.toLowerCase();
  }

  /**
   * Sets the accent custom properties on `element`: the accent, the text colour on it (dark or
   * light, whichever contrasts more by WCAG relative luminance), and the accent as text on white.
   */
  function applyAccent(element, accent) {
    var hex = parseHexColor(accent);
    if (!hex) return;
    var channels = [1, 3, 5].map(function (i) {
      var c = parseInt(hex.substr(i, 2), 16) / 255;
      return c <= 0.03928 ? c / 12.92 : Math.pow((c + 0.055) / 1.055, 2.4);
    });
    var light = 0.2126 * channels[0] + 0.7152 * channels[1] + 0.0722 * channels[2] > 0.45;
    element.style.setProperty("--cg-accent", hex);
    element.style.setProperty("--cg-on-accent", light ? "#111827" : "#ffffff");
    element.style.setProperty("--cg-accent-text", light ? "#111827" : hex);
  }

  ChatGate.dom = {
    h: h,
    icon: icon,
    iconButton: iconButton,
    formatSize: formatSize,
    parseHexColor: parseHexColor,
    applyAccent: applyAccent,
  };
})(window);
