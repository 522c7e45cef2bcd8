/* chatgate: boots the full-page chat served at "/". Options come from /api/widget/config and
 * the query string: ?handler=<name> talks to a named @app.message handler, ?token=<jwt> signs in
 * with a host-signed identity token, ?reconnect_ms=<n> sets the first reconnect delay. */
(function (global) {
  "use strict";

  var ChatGate = global.ChatGate;
  var params = new URLSearchParams(global.location.search);

  function boot(config) {
    config = config || {};
    var title = config.title || "Chat";
    global.document.title = title;
    var chat = ChatGate.mount(global.document.getElementById("chat"), {
      mode: "page",
      gateway: global.location.origin,
      title: title,
      accent: config.accent_color,
      handler: params.get("handler") || null,
      token: params.get("token") || null,
      reconnectDelay: Number(params.get("reconnect_ms")) || undefined,
      config: config,
    });
    global.chatgate = chat; // for the console and for tests
  }

  fetch("/api/widget/config", { credentials: "same-origin" })
    .then(function (response) {
      return response.ok ? response.json() : {};
    })
    .catch(function () {
      return {};
    })
    .then(boot);
})(window);
