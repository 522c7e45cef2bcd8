/* chatgate widget: the composer — the message field, files attached to the next message, and the
 * Send / Stop button. Enter sends, Shift+Enter is a new line (and Enter while an input method is
 * composing is left alone); files come from the picker, a paste, or a drop, and upload at once
 * with their progress on their chip. */
(function (global) {
  "use strict";

  var ChatGate = (global.ChatGate = global.ChatGate || {});
  var h = ChatGate.dom.h;
  var MAX_INPUT_HEIGHT_PX = 160; // the field grows with its text up to about six lines
  var FRAME_OVERHEAD_BYTES = 512; // room for the frame's attachment ids next to the text

  /** The upload and frame limits from GET /api/widget/config, so the composer can say no early. */
  function readLimits(config) {
    var types = Array.isArray(config.accepted_types) ? config.accepted_types : [];
    return {
      maxUploadBytes: Number(config.max_upload_bytes) || 0,
      maxFrameBytes: Number(config.max_frame_bytes) || 0,
      accept: types.indexOf("*/*") === -1 ? types.join(",") : "",
    };
  }

  /**
   * options: client (a ChatClient), limits (readLimits), showStatus(note) for complaints,
   *          onSent() after a message went out.
   */
  function Composer(doc, options) {
    var client = options.client;
    var limits = options.limits;
    var pending = []; // {file, progress, uploaded, error}: files for the next message
    var iconButton = ChatGate.dom.iconButton;

    var form = h(doc, "form", "cg-composer");
    form.setAttribute("aria-label", "Send a message");
    form.noValidate = true;
    var chips = h(doc, "div", "cg-attachments");
    chips.hidden = true;
    var row = h(doc, "div", "cg-input-row");
    var attachButton = iconButton(doc, "attach", "Attach a file", "cg-attach");
    var picker = h(doc, "input", "cg-file-input");
    picker.type = "file";
    picker.multiple = true;
    if (limits.accept) picker.accept = limits.accept;
    picker.tabIndex = -1;
    picker.setAttribute("aria-hidden", "true");
    var input = h(doc, "textarea", "cg-input");
    input.rows = 1;
    input.placeholder = "Write a message\u2026";
    input.setAttribute("aria-label", "Message");
    input.setAttribute("enterkeyhint", "send");
    var sendButton = iconButton(doc, "send", "Send message", "cg-send");
    sendButton.type = "submit";
    var stopButton = iconButton(doc, "stop", "Stop generating", "cg-stop");
    stopButton.hidden = true;
    row.appendChild(attachButton);
    row.appendChild(input);
    row.appendChild(sendButton);
    row.appendChild(stopButton);
    var hint = h(doc, "div", "cg-composer-hint", "Enter to send \u00b7 Shift+Enter for a new line");
    hint.setAttribute("aria-hidden", "true");
    form.appendChild(chips);
    form.appendChild(row);
    form.appendChild(picker);
    form.appendChild(hint);

    function autosize() {
      input.style.height = "auto";
      input.style.height = Math.min(input.scrollHeight, MAX_INPUT_HEIGHT_PX) + "px";
    }

    function renderChips() {
      while (chips.firstChild) chips.removeChild(chips.firstChild);
      pending.forEach(function (entry) {
        var chip = h(doc, "span", "cg-file cg-pending-file" + (entry.error ? " cg-file-error" : ""));
        chip.appendChild(h(doc, "span", "cg-file-name", entry.file.name));
        var note = entry.error
          ? entry.error
          : entry.uploaded
            ? ChatGate.dom.formatSize(entry.file.size)
            : Math.round(entry.progress * 100) + "%";
        chip.appendChild(h(doc, "span", "cg-file-size", note));
        var remove = h(doc, "button", "cg-file-remove", "\u00d7");
        remove.type = "button";
        remove.setAttribute("aria-label", "Remove " + entry.file.name);
        remove.addEventListener("click", function () {
          pending = pending.filter(function (e) {
            return e !== entry;
          });
          renderChips();
          input.focus();
        });
        chip.appendChild(remove);
        chips.appendChild(chip);
      });
      chips.hidden = pending.length === 0;
    }

    function attach(file) {
      var entry = { file: file, progress: 0, uploaded: null, error: "" };
      pending.push(entry);
      if (limits.maxUploadBytes && file.size > limits.maxUploadBytes) {
        entry.error = "too large (max " + ChatGate.dom.formatSize(limits.maxUploadBytes) + ")";
        renderChips();
        return;
      }
      renderChips();
      client
        .upload(file, function (fraction) {
          entry.progress = fraction;
          renderChips();
        })
        .then(function (uploaded) {
          entry.uploaded = uploaded;
          renderChips();
        })
        .catch(function (error) {
          entry.error = error.message || "Upload failed";
          renderChips();
        });
    }

    function tooLong(text) {
      if (!limits.maxFrameBytes) return false;
      var frame = JSON.stringify({ type: "message", id: ChatGate.newId(), text: text });
      return new Blob([frame]).size > limits.maxFrameBytes - FRAME_OVERHEAD_BYTES;
    }

    function submit() {
      var text = input.value.replace(/^\s+|\s+$/g, "");
      var uploading = pending.some(function (e) {
        return !e.uploaded && !e.error;
      });
      if (uploading) {
        options.showStatus({ text: "Waiting for the upload to finish\u2026", detail: "", error: true });
        return;
      }
      var files = pending
        .filter(function (e) {
          return e.uploaded;
        })
        .map(function (e) {
          return e.uploaded;
        });
      if (!text && !files.length) return;
      if (tooLong(text)) {
        options.showStatus({ text: "That message is too long to send.", detail: "Shorten it or attach it as a file.", error: true });
        return;
      }
      client.sendMessage(text, files);
      input.value = "";
      pending = [];
      renderChips();
      autosize();
      if (options.onSent) options.onSent();
    }

    form.addEventListener("submit", function (event) {
      event.preventDefault();
      submit();
      input.focus();
    });
    input.addEventListener("keydown", function (event) {
      // keyCode 229: a key pressed while an input method (IME) composes; Enter confirms the text.
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing && event.keyCode !== 229) {
        event.preventDefault();
        submit();
      }
    });
    input.addEventListener("input", function () {
      autosize();
      self.refresh();
    });
    input.addEventListener("paste", function (event) {
      var files = event.clipboardData && event.clipboardData.files;
      if (files && files.length) {
        event.preventDefault();
        for (var i = 0; i < files.length; i++) attach(files[i]);
      }
    });
    form.addEventListener("dragover", function (event) {
      if (event.dataTransfer && Array.prototype.indexOf.call(event.dataTransfer.types, "Files") !== -1) event.preventDefault();
    });
    form.addEventListener("drop", function (event) {
      var files = event.dataTransfer && event.dataTransfer.files;
      if (files && files.length) {
        event.preventDefault();
        for (var i = 0; i < files.length; i++) attach(files[i]);
      }
    });
    attachButton.addEventListener("click", function () {
      picker.click();
    });
    picker.addEventListener("change", function () {
      for (var i = 0; i < picker.files.length; i++) attach(picker.files[i]);
      picker.value = "";
      input.focus();
    });
    stopButton.addEventListener("click", function () {
      client.stopReply();
      input.focus();
    });

    var self = {
      element: form,
      focus: function () {
        input.focus();
      },
      /** Stop replaces Send while a reply runs (Send comes back as soon as there is text). */
      refresh: function () {
        var replying = client.isReplying();
        stopButton.hidden = !replying;
        sendButton.hidden = replying && !input.value.trim();
      },
    };
    return self;
  }

  ChatGate.Composer = Composer;
  ChatGate.readLimits = readLimits;
})(window);
