/* chatgate widget: how each block type (docs/adapter-guide.md, "Block envelopes") looks.
 *
 * render(block, ctx) returns a DOM element (or null for blocks with no visual, like
 * session_title). Every string from the server goes in through textContent or the safe Markdown
 * renderer; URLs pass ChatGate.markdown.safeUrl (or resolve to the gateway for /files/ paths).
 * A block shown again with the same id is rendered afresh and replaces the old element, so
 * renderers are pure functions of the payload plus the ctx.uploads state of a running upload.
 */
(function (global) {
  "use strict";

  var ChatGate = (global.ChatGate = global.ChatGate || {});

  var h = ChatGate.dom.h;
  var formatSize = ChatGate.dom.formatSize;

  function str(value) {
    return typeof value === "string" ? value : value == null ? "" : String(value);
  }

  function markdown(doc, text, className) {
    var box = h(doc, "div", "cg-md " + (className || ""));
    box.appendChild(ChatGate.markdown.render(str(text), doc));
    return box;
  }

  /** A URL a block may point at: absolute http(s), or a path on the gateway (signed /files/ URLs). */
  function resolveUrl(raw, ctx) {
    var url = str(raw).trim();
    if (url[0] === "/" && url[1] !== "/") return ChatGate.markdown.safeUrl(ctx.gateway + url);
    var safe = ChatGate.markdown.safeUrl(url);
    return safe && safe.indexOf("mailto:") !== 0 ? safe : null;
  }

  function card(doc, block, kind, title) {
    var box = h(doc, "div", "cg-card cg-" + kind);
    box.setAttribute("data-block-id", str(block.id));
    box.setAttribute("data-block-type", str(block.type));
    if (title) {
      var head = h(doc, "div", "cg-card-head");
      head.appendChild(h(doc, "span", "cg-card-title", title));
      box.appendChild(head);
    }
    return box;
  }

  function button(doc, label, className, onClick) {
    var b = h(doc, "button", className, label);
    b.type = "button";
    b.addEventListener("click", onClick);
    return b;
  }

  // ------------------------------------------------------------ suggestions

  function suggestions(block, ctx) {
    var doc = ctx.doc;
    var p = block.payload || {};
    var box = h(doc, "div", "cg-suggestions");
    box.setAttribute("data-block-id", str(block.id));
    box.setAttribute("data-block-type", "suggestions");
    box.setAttribute("role", "group");
    box.setAttribute("aria-label", str(p.title) || "Suggestions");
    if (p.title) box.appendChild(h(doc, "div", "cg-suggestions-title", p.title));
    var items = Array.isArray(p.suggestions) ? p.suggestions : [];
    items.forEach(function (item, index) {
      var s = typeof item === "string" ? { label: item, target: "prompt", value: item } : item || {};
      var label = str(s.label || s.value) || "Option " + (index + 1);
      var chip = button(doc, label, "cg-chip", function () {
        chip.setAttribute("aria-pressed", "true");
        ctx.pressSuggestion(block.id, index, s.target === "action" ? null : str(s.value || label));
      });
      if (s.description) chip.title = str(s.description);
      box.appendChild(chip);
    });
    return box;
  }

  // ------------------------------------------------------------ approval

  function approval(block, ctx) {
    var doc = ctx.doc;
    var p = block.payload || {};
    var box = card(doc, block, "approval");
    box.setAttribute("role", "group");
    box.setAttribute("aria-label", "Approval");
    box.appendChild(markdown(doc, p.message || "Approve?"));
    var row = h(doc, "div", "cg-card-actions");
    if (p.completed) {
      var outcome = p.timed_out ? "Timed out" : p.approved ? "Approved" : "Rejected";
      var state = p.timed_out ? "timeout" : p.approved ? "ok" : "no";
      row.appendChild(h(doc, "span", "cg-outcome cg-outcome-" + state, outcome));
    } else {
      var approve, reject;
      var press = function (value) {
        approve.disabled = reject.disabled = true;
        (value === "approve" ? approve : reject).classList.add("cg-chosen");
        ctx.client.pressButton(block.id, value, false);
      };
      approve = button(doc, str(p.approve_label) || "Approve", "cg-btn cg-btn-primary", function () {
        press("approve");
      });
      reject = button(doc, str(p.reject_label) || "Reject", "cg-btn", function () {
        press("reject");
      });
      row.appendChild(approve);
      row.appendChild(reject);
    }
    box.appendChild(row);
    return box;
  }

  // ------------------------------------------------------------ file upload prompt

  function fileUpload(block, ctx) {
    var doc = ctx.doc;
    var p = block.payload || {};
    var box = card(doc, block, "upload");
    box.setAttribute("role", "group");
    box.setAttribute("aria-label", "File upload");
    box.appendChild(markdown(doc, p.message || "Please upload a file"));
    if (p.completed) {
      var done = h(doc, "div", "cg-upload-done");
      done.appendChild(h(doc, "span", "cg-check", "\u2713"));
      done.appendChild(h(doc, "span", "cg-file-name", str(p.filename) || "File received"));
      if (p.size) done.appendChild(h(doc, "span", "cg-file-size", formatSize(p.size)));
      box.appendChild(done);
      box.classList.add("cg-completed");
      return box;
    }
    var state = (ctx.uploads[block.id] = ctx.uploads[block.id] || { progress: null, error: "", name: "" });
    var input = h(doc, "input", "cg-file-input");
    input.type = "file";
    input.tabIndex = -1;
    input.setAttribute("aria-hidden", "true");
    if (p.accept) input.accept = str(p.accept);
    var row = h(doc, "div", "cg-card-actions");
    var choose = button(doc, "Choose file", "cg-btn cg-btn-primary cg-upload-choose", function () {
      input.click();
    });
    var status = h(doc, "div", "cg-upload-status");
    status.setAttribute("aria-live", "polite");
    var bar = h(doc, "div", "cg-progress");
    bar.setAttribute("role", "progressbar");
    bar.setAttribute("aria-label", "Upload progress");
    bar.setAttribute("aria-valuemin", "0");
    bar.setAttribute("aria-valuemax", "100");
    var fill = h(doc, "div", "cg-progress-fill");
    bar.appendChild(fill);

    function paint() {
      var uploading = state.progress !== null && !state.error;
      choose.disabled = uploading || state.sent;
      bar.hidden = !uploading && !state.sent;
      var percent = Math.round((state.progress || 0) * 100);
      fill.style.width = percent + "%";
      bar.setAttribute("aria-valuenow", String(percent));
      status.className = "cg-upload-status" + (state.error ? " cg-error-text" : "");
      if (state.error) status.textContent = state.error;
      else if (state.sent) status.textContent = state.name + " \u2014 uploaded";
      else if (uploading) status.textContent = "Uploading " + state.name + "\u2026 " + percent + "%";
      else status.textContent = p.accept ? "Accepted: " + str(p.accept) : "";
    }

    function start(file) {
      if (!file) return;
      state.name = file.name;
      var max = ctx.limits && ctx.limits.maxUploadBytes;
      if (max && file.size > max) {
        state.progress = null;
        state.error = file.name + " is too large: the limit is " + formatSize(max) + ".";
        paint();
        return;
      }
      state.error = "";
      state.progress = 0;
      paint();
      ctx.client
        .upload(file, function (fraction) {
          state.progress = fraction;
          paint();
        })
        .then(function (uploaded) {
          state.sent = true;
          paint();
          ctx.client.uploadDone(block.id, uploaded.file_id);
        })
        .catch(function (error) {
          state.progress = null;
          state.error = error.message || "The upload failed.";
          paint();
        });
    }

    input.addEventListener("change", function () {
      start(input.files && input.files[0]);
      input.value = "";
    });
    box.addEventListener("dragover", function (event) {
      event.preventDefault();
      box.classList.add("cg-dragging");
    });
    box.addEventListener("dragleave", function () {
      box.classList.remove("cg-dragging");
    });
    box.addEventListener("drop", function (event) {
      event.preventDefault();
      box.classList.remove("cg-dragging");
      if (!choose.disabled) start(event.dataTransfer && event.dataTransfer.files[0]);
    });
    row.appendChild(choose);
    row.appendChild(h(doc, "span", "cg-hint", "or drop it here"));
    box.appendChild(row);
    box.appendChild(input);
    box.appendChild(bar);
    box.appendChild(status);
    paint();
    return box;
  }

  // ------------------------------------------------------------ image

  /** Inline raster images (session.show_image with a data: URL); an <img> never runs script. */
  var DATA_IMAGE = /^data:image\/(png|jpeg|gif|webp|avif|bmp);base64,[A-Za-z0-9+/=\s]+$/;

  function image(block, ctx) {
    var doc = ctx.doc;
    var p = block.payload || {};
    var inline = DATA_IMAGE.test(str(p.url)) ? str(p.url) : null;
    var url = inline || resolveUrl(p.url, ctx);
    if (!url) return fallback(block, ctx);
    var figure = h(doc, "figure", "cg-image");
    figure.setAttribute("data-block-id", str(block.id));
    figure.setAttribute("data-block-type", "image");
    // Browsers refuse to navigate to data: URLs, so an inline image is not a link.
    var a = h(doc, inline ? "span" : "a");
    if (!inline) {
      a.href = url;
      a.target = "_blank";
      a.rel = "noopener noreferrer";
    }
    var img = h(doc, "img");
    img.src = url;
    img.alt = str(p.alt);
    img.loading = "lazy";
    img.decoding = "async";
    if (p.width && Number(p.width) > 0) img.style.width = Math.min(Number(p.width), 2000) + "px";
    img.addEventListener("load", function () {
      if (ctx.onMediaLoad) ctx.onMediaLoad();
    });
    a.appendChild(img);
    figure.appendChild(a);
    if (p.alt) figure.appendChild(h(doc, "figcaption", "", p.alt));
    return figure;
  }

  // ------------------------------------------------------------ task card

  var TASK_STATES = {
    pending: "waiting",
    queued: "waiting",
    scheduled: "waiting",
    running: "running",
    started: "running",
    in_progress: "running",
    completed: "ok",
    complete: "ok",
    succeeded: "ok",
    success: "ok",
    done: "ok",
    failed: "failed",
    error: "failed",
    cancelled: "failed",
    canceled: "failed",
    timeout: "failed",
  };

  function taskCard(block, ctx) {
    var doc = ctx.doc;
    var p = block.payload || {};
    var status = str(p.status || (p.error ? "failed" : p.result != null ? "completed" : "running")).toLowerCase();
    var kind = TASK_STATES[status] || "running";
    var box = card(doc, block, "task");
    box.setAttribute("data-status", status);
    var head = h(doc, "div", "cg-card-head");
    head.appendChild(h(doc, "span", "cg-task-dot cg-task-" + kind));
    head.appendChild(h(doc, "span", "cg-card-title", str(p.name) || "Task"));
    var badge = h(doc, "span", "cg-badge cg-badge-" + kind, status.replace(/_/g, " "));
    badge.setAttribute("role", "status");
    head.appendChild(badge);
    box.appendChild(head);
    if (p.message) box.appendChild(markdown(doc, p.message));
    if (p.error) box.appendChild(h(doc, "div", "cg-task-error", str(p.error)));
    if (p.result != null && p.result !== "") {
      var result = typeof p.result === "string" ? p.result : JSON.stringify(p.result, null, 2);
      box.appendChild(typeof p.result === "string" ? markdown(doc, result, "cg-task-result") : preformatted(doc, result));
    }
    return box;
  }

  function preformatted(doc, text) {
    var pre = h(doc, "pre", "cg-json");
    pre.appendChild(h(doc, "code", "", text.length > 4000 ? text.slice(0, 4000) + "\n\u2026" : text));
    return pre;
  }

  // ------------------------------------------------------------ step status (session.show_step)

  function stepStatus(block, ctx) {
    var doc = ctx.doc;
    var p = block.payload || {};
    var status = str(p.status || "running").toLowerCase();
    var kind = TASK_STATES[status] || "running";
    var box = h(doc, "div", "cg-step");
    box.setAttribute("data-block-id", str(block.id));
    box.setAttribute("data-block-type", "step_status");
    box.setAttribute("data-status", status);
    var line = h(doc, "div", "cg-step-line");
    line.appendChild(h(doc, "span", "cg-task-dot cg-task-" + kind));
    line.appendChild(h(doc, "span", "cg-step-label", str(p.label) || "Step"));
    if (p.detail) line.appendChild(h(doc, "span", "cg-detail", str(p.detail)));
    box.appendChild(line);
    appendLinks(box, p.links, ctx);
    if (p.fields && typeof p.fields === "object") box.appendChild(fieldList(doc, p.fields));
    return box;
  }

  /** links: [{label | title, url}], each opened in a new tab (unsafe URLs are dropped). */
  function appendLinks(box, links, ctx) {
    (Array.isArray(links) ? links : []).forEach(function (item) {
      var url = item && resolveUrl(item.url, ctx);
      if (!url) return;
      var a = h(ctx.doc, "a", "cg-step-link", str(item.label || item.title) || url);
      a.href = url;
      a.target = "_blank";
      a.rel = "noopener noreferrer";
      box.appendChild(a);
    });
  }

  function fieldList(doc, fields) {
    var list = h(doc, "dl", "cg-step-fields");
    Object.keys(fields).forEach(function (key) {
      var value = fields[key];
      list.appendChild(h(doc, "dt", "", key));
      list.appendChild(h(doc, "dd", "", typeof value === "string" ? value : JSON.stringify(value)));
    });
    return list;
  }

  // ------------------------------------------------------------ activity

  /** payload (session.show_activity): label, detail?, icon? (an emoji or a short text), links?,
   * fields? (behind a disclosure, open when expanded), activity_id. The same block id (the
   * activity_id) updates the row in place. */
  function activity(block, ctx) {
    var doc = ctx.doc;
    var p = block.payload || {};
    var box = h(doc, "div", "cg-step cg-activity");
    box.setAttribute("data-block-id", str(block.id));
    box.setAttribute("data-block-type", "activity");
    var line = h(doc, "div", "cg-step-line");
    if (p.icon) {
      var mark = h(doc, "span", "cg-activity-icon", str(p.icon));
      mark.setAttribute("aria-hidden", "true");
      line.appendChild(mark);
    }
    line.appendChild(h(doc, "span", "cg-step-label", str(p.label) || "Activity"));
    if (p.detail) line.appendChild(h(doc, "span", "cg-detail", str(p.detail)));
    box.appendChild(line);
    appendLinks(box, p.links, ctx);
    if (p.fields && typeof p.fields === "object" && Object.keys(p.fields).length) {
      var more = h(doc, "details", "cg-activity-more");
      more.open = !!p.expanded;
      more.appendChild(h(doc, "summary", "", "Details"));
      more.appendChild(fieldList(doc, p.fields));
      box.appendChild(more);
    }
    return box;
  }

  // ------------------------------------------------------------ integration

  /** payload: type, title? (the provider's name), reason, mode ("oauth" | "secret"),
   * connect_url? (a signed link that opens the provider's consent page or the secret form),
   * expires_at? (seconds since the epoch: the link's end), completed?, timed_out? */
  function integration(block, ctx) {
    var doc = ctx.doc;
    var p = block.payload || {};
    var name = str(p.title) || str(p.type) || "an integration";
    var box = card(doc, block, "integration", "Connect " + name);
    if (p.reason) box.appendChild(markdown(doc, p.reason));
    var row = h(doc, "div", "cg-card-actions");
    var url = resolveUrl(p.connect_url, ctx);
    var expired = Number(p.expires_at) > 0 && Number(p.expires_at) * 1000 < Date.now();
    if (p.completed) {
      row.appendChild(h(doc, "span", "cg-outcome cg-outcome-ok", "\u2713 Connected"));
    } else if (p.timed_out || (expired && url)) {
      row.appendChild(h(doc, "span", "cg-outcome cg-outcome-timeout", "This link has expired. Ask again to connect."));
    } else if (url) {
      var a = h(doc, "a", "cg-btn cg-btn-primary cg-connect", "Connect");
      a.href = url;
      a.target = "_blank";
      a.rel = "noopener noreferrer";
      a.setAttribute("aria-label", "Connect " + name);
      row.appendChild(a);
      row.appendChild(h(doc, "span", "cg-hint", p.mode === "secret" ? "Opens a form for your credentials" : "Opens " + name + " in a new tab"));
    } else {
      row.appendChild(h(doc, "span", "cg-hint", "Waiting for " + name + " to be connected\u2026"));
    }
    box.appendChild(row);
    return box;
  }

  // ------------------------------------------------------------ notification / fallback

  function notification(block, ctx) {
    var doc = ctx.doc;
    var p = block.payload || {};
    var box = h(doc, "div", "cg-system");
    box.setAttribute("data-block-id", str(block.id));
    box.setAttribute("data-block-type", "notification");
    box.appendChild(h(doc, "span", "", str(p.text) || "Working\u2026"));
    if (p.detail) box.appendChild(h(doc, "span", "cg-detail", str(p.detail)));
    return box;
  }

  function fallback(block, ctx) {
    var doc = ctx.doc;
    var p = block.payload || {};
    var box = card(doc, block, "fallback", str(p.title) || str(block.type) || "Block");
    var text = p.text || p.message || p.description;
    if (typeof text === "string" && text) box.appendChild(markdown(doc, text));
    else {
      var json;
      try {
        json = JSON.stringify(p, null, 2);
      } catch (e) {
        json = "";
      }
      if (json && json !== "{}") box.appendChild(preformatted(doc, json));
    }
    return box;
  }

  function nothing() {
    return null;
  }

  var RENDERERS = {
    suggestions: suggestions,
    approval_prompt: approval,
    file_upload: fileUpload,
    image: image,
    task_card: taskCard,
    integration_prompt: integration,
    notification: notification,
    step_status: stepStatus,
    activity: activity,
    // No visual: the title goes to the header; session events are for the app's own UI.
    session_title: nothing,
    session_event: nothing,
  };

  /** True for a prompt the handler is blocked on until the user answers it. */
  function awaitsUser(block) {
    var p = (block && block.payload) || {};
    var prompts = { approval_prompt: true, file_upload: true, integration_prompt: true };
    return !!(prompts[block.type] && p.blocking && !p.completed && !p.timed_out);
  }

  function render(block, ctx) {
    var fn = Object.prototype.hasOwnProperty.call(RENDERERS, block.type) ? RENDERERS[block.type] : fallback;
    try {
      return fn(block, ctx);
    } catch (e) {
      if (global.console) global.console.error("chatgate: block", block.type, e);
      return fallback(block, ctx);
    }
  }

  ChatGate.blocks = { render: render, awaitsUser: awaitsUser, resolveUrl: resolveUrl };
})(window);
