/* chatgate embed script.
 *
 *   <script src="https://gw.example.com/widget.js" data-title="Support" data-accent="#0e7490"
 *           data-position="right" data-gateway="https://gw.example.com" data-token="..."></script>
 *
 * Adds a launcher button and a chat panel to the host page, inside a shadow root so the host's
 * CSS cannot reach in and ours cannot leak out. The chat itself is the same code the full page
 * uses (chat.js and friends, loaded from the gateway as classic scripts, which need no CORS).
 * Attributes (all optional): data-gateway (default: where this script came from), data-title,
 * data-accent (#rrggbb), data-position (right | left), data-token (a host-signed identity
 * token), data-handler (a named @app.message handler), data-open ("true": open at load),
 * data-token-url (a URL on the host site answering {"token": "..."} or the bare token: asked for
 * a fresh token when the gateway refuses an expired one), data-greeting, data-reconnect-ms
 * (first reconnect delay).
 * window.ChatGateWidget = {open(), close(), toggle(), setToken(token), chat}.
 */
(function (global) {
  "use strict";

  var doc = global.document;
  var script = doc.currentScript;
  if (!script || global.ChatGateWidget) return; // loaded twice, or not from a <script> tag
  var data = script.dataset || {};
  var gateway = String(data.gateway || new URL(script.src, global.location.href).origin).replace(/\/+$/, "");
  // The chat, in dependency order (index.html loads the same list).
  var CHAT_FILES = ["markdown.js", "dom.js", "connection.js", "client.js", "blocks.js", "rows.js", "composer.js", "chat.js"];
  var OPEN_KEY = "chatgate:" + gateway + ":open";
  var SVG_NS = "http://www.w3.org/2000/svg";
  var CHAT_ICON =
    "M12 3C6.5 3 2 6.8 2 11.5c0 2.4 1.2 4.6 3.1 6.1L4.4 21l4-1.9c1.1.3 2.3.5 3.6.5 5.5 0 10-3.8 10-8.5S17.5 3 12 3z";
  var CLOSE_ICON = "M18.3 5.7 12 12l6.3 6.3-1.4 1.4L10.6 13.4 4.3 19.7 2.9 18.3 9.2 12 2.9 5.7 4.3 4.3l6.3 6.3 6.3-6.3z";

  var api = { open: open, close: close, toggle: toggle, setToken: setToken, chat: null, ready: null };
  var token = data.token || null;

  function setToken(value) {
    token = value || null;
    if (chat) chat.setToken(token);
  }

  /** Asks the host site (same origin as the page, so its own cookies apply) for a fresh token. */
  function fetchToken() {
    return fetch(data.tokenUrl, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) {
        if (!response.ok) throw new Error("token endpoint answered " + response.status);
        return response.text();
      })
      .then(function (body) {
        var value;
        try {
          value = JSON.parse(body).token;
        } catch (e) {
          value = body.trim();
        }
        token = value || null;
        return token;
      });
  }
  global.ChatGateWidget = api;

  function loadScript(src) {
    return new Promise(function (resolve, reject) {
      var tag = doc.createElement("script");
      tag.src = src;
      tag.async = false; // keep the files in order
      tag.onload = function () {
        resolve();
      };
      tag.onerror = function () {
        reject(new Error("chatgate: could not load " + src));
      };
      (doc.head || doc.documentElement).appendChild(tag);
    });
  }

  function loadChat() {
    if (global.ChatGate && global.ChatGate.mount) return Promise.resolve();
    return Promise.all(
      CHAT_FILES.map(function (file) {
        return loadScript(gateway + "/static/" + file);
      })
    );
  }

  function loadConfig() {
    return fetch(gateway + "/api/widget/config", { credentials: "omit" })
      .then(function (response) {
        return response.ok ? response.json() : {};
      })
      .catch(function () {
        return {};
      });
  }

  function svgIcon(d) {
    var svg = doc.createElementNS(SVG_NS, "svg");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("aria-hidden", "true");
    svg.setAttribute("focusable", "false");
    var path = doc.createElementNS(SVG_NS, "path");
    path.setAttribute("d", d);
    path.setAttribute("fill", "currentColor");
    svg.appendChild(path);
    return svg;
  }

  function storageGet(key) {
    try {
      return global.sessionStorage.getItem(key);
    } catch (e) {
      return null;
    }
  }

  function storageSet(key, value) {
    try {
      if (value) global.sessionStorage.setItem(key, value);
      else global.sessionStorage.removeItem(key);
    } catch (e) {
      /* storage disabled: the panel just starts closed */
    }
  }

  // ---------------------------------------------------------------- the host element
  var host = doc.createElement("chatgate-widget");
  host.setAttribute("data-gateway", gateway);
  var shadow = host.attachShadow({ mode: "open" });
  var stylesheet = doc.createElement("link");
  stylesheet.rel = "stylesheet";
  stylesheet.href = gateway + "/static/chat.css";
  var styled = new Promise(function (resolve) {
    stylesheet.onload = stylesheet.onerror = resolve;
  });
  shadow.appendChild(stylesheet);

  var wrapper = doc.createElement("div");
  wrapper.className = "cg-widget" + (data.position === "left" ? " cg-left" : "");
  wrapper.style.visibility = "hidden"; // until chat.css has loaded: no flash of unstyled widget
  var launcher = doc.createElement("button");
  launcher.type = "button";
  launcher.className = "cg-launcher";
  launcher.setAttribute("aria-label", "Open chat");
  launcher.setAttribute("aria-expanded", "false");
  launcher.setAttribute("aria-controls", "cg-panel");
  launcher.appendChild(svgIcon(CHAT_ICON));
  var badge = doc.createElement("span");
  badge.className = "cg-unread";
  badge.hidden = true;
  badge.setAttribute("aria-hidden", "true");
  launcher.appendChild(badge);
  var panel = doc.createElement("div");
  panel.className = "cg-panel";
  panel.id = "cg-panel";
  panel.setAttribute("role", "dialog");
  panel.setAttribute("aria-modal", "false");
  panel.hidden = true;
  wrapper.appendChild(panel);
  wrapper.appendChild(launcher);
  shadow.appendChild(wrapper);

  var isOpen = false;
  var unread = 0;
  var chat = null;
  var config = {};

  /** The accent on the launcher before the chat's scripts (and ChatGate.dom.applyAccent) load. */
  function setAccent(color) {
    var hex = /^#([0-9a-f]{3}|[0-9a-f]{6})$/i.test(String(color || "").trim()) ? String(color).trim() : null;
    if (!hex) return;
    if (hex.length === 4) hex = "#" + hex[1] + hex[1] + hex[2] + hex[2] + hex[3] + hex[3];
    var rgb = [1, 3, 5].map(function (i) {
      var c = parseInt(hex.substr(i, 2), 16) / 255;
      return c <= 0.03928 ? c / 12.92 : Math.pow((c + 0.055) / 1.055, 2.4);
    });
    var light = 0.2126 * rgb[0] + 0.7152 * rgb[1] + 0.0722 * rgb[2] > 0.45;
    wrapper.style.setProperty("--cg-accent", hex);
    wrapper.style.setProperty("--cg-on-accent", light ? "#111827" : "#ffffff");
    wrapper.style.setProperty("--cg-accent-text", light ? "#111827" : hex);
  }

  function ensureChat() {
    if (chat) return Promise.resolve(chat);
    var signedIn = !token && data.tokenUrl ? fetchToken() : Promise.resolve(token);
    return Promise.all([api.ready, signedIn]).then(function () {
      if (chat) return chat;
      var title = data.title || config.title || "Chat";
      panel.setAttribute("aria-label", title);
      chat = global.ChatGate.mount(panel, {
        mode: "widget",
        gateway: gateway,
        token: token,
        refreshToken: data.tokenUrl ? fetchToken : null,
        handler: data.handler || null,
        title: title,
        accent: data.accent || config.accent_color,
        greeting: data.greeting || null,
        reconnectDelay: Number(data.reconnectMs) || undefined,
        config: config,
        onClose: function () {
          close();
          launcher.focus();
        },
        onUnread: function (count) {
          unread = count;
          badge.hidden = !count;
          badge.textContent = count > 9 ? "9+" : String(count);
          labelLauncher();
        },
      });
      api.chat = chat;
      return chat;
    });
  }

  function labelLauncher() {
    var label = isOpen ? "Close chat" : unread ? "Open chat (" + unread + " new)" : "Open chat";
    launcher.setAttribute("aria-label", label);
    launcher.setAttribute("aria-expanded", isOpen ? "true" : "false");
  }

  function open() {
    return ensureChat().then(function (c) {
      isOpen = true;
      panel.hidden = false;
      wrapper.classList.add("cg-open");
      launcher.replaceChild(svgIcon(CLOSE_ICON), launcher.firstChild);
      storageSet(OPEN_KEY, "1");
      c.setVisible(true);
      labelLauncher();
      c.focus();
    });
  }

  function close() {
    isOpen = false;
    panel.hidden = true;
    wrapper.classList.remove("cg-open");
    launcher.replaceChild(svgIcon(CHAT_ICON), launcher.firstChild);
    storageSet(OPEN_KEY, null);
    if (chat) chat.setVisible(false);
    labelLauncher();
  }

  function toggle() {
    return isOpen ? (close(), Promise.resolve()) : open();
  }

  launcher.addEventListener("click", function () {
    toggle();
  });

  setAccent(data.accent);
  api.ready = Promise.all([loadChat(), loadConfig(), styled]).then(function (results) {
    config = results[1] || {};
    if (!data.accent) setAccent(config.accent_color);
    wrapper.style.visibility = "";
  });
  api.ready.catch(function (error) {
    if (global.console) global.console.error(error);
  });

  function attach() {
    doc.body.appendChild(host);
    if (data.open === "true" || storageGet(OPEN_KEY)) open();
  }
  if (doc.body) attach();
  else doc.addEventListener("DOMContentLoaded", attach);
})(window);
