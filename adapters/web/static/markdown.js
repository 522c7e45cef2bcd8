/* chatgate widget: a small, safe Markdown renderer, written by hand.
 *
 * Why by hand: the widget loads nothing from a CDN and has no bundler, and the renderer must be
 * safe by construction. It never assigns HTML strings: it parses Markdown into DOM nodes built
 * with createElement/createTextNode, so any HTML in the input ("<img onerror=...>", "<script>")
 * becomes visible text. Links keep only http:, https: and mailto: URLs (others render as their
 * label) and open with rel="noopener noreferrer". Images render as links, so a message cannot
 * make the browser fetch an arbitrary URL.
 *
 * Supported: paragraphs (single newlines are line breaks, as chat users expect), **bold**,
 * *italic*, ~~strike~~, `code`, fenced code, ordered/unordered (nested) lists, [links](url),
 * <autolinks> and bare URLs, # headings, > blockquotes, GFM tables, thematic breaks, \escapes.
 * An unclosed fence renders as code to the end, so a streaming reply looks right mid-way.
 */
(function (global) {
  "use strict";

  var SAFE_PROTOCOLS = { "http:": true, "https:": true, "mailto:": true };
  var MAX_DEPTH = 12; // nesting guard against pathological input (e.g. "> > > > ...")

  /** The normalised URL when it is an absolute http(s)/mailto URL, else null. */
  function safeUrl(raw) {
    if (typeof raw !== "string") return null;
    var trimmed = raw.trim();
    if (!/^(https?:|mailto:)/i.test(trimmed)) return null;
    try {
      var url = new URL(trimmed);
      return SAFE_PROTOCOLS[url.protocol] ? url.href : null;
    } catch (e) {
      return null;
    }
  }

  function el(doc, tag, className) {
    var node = doc.createElement(tag);
    if (className) node.className = className;
    return node;
  }

  function link(doc, href, children) {
    var a = el(doc, "a");
    a.href = href;
    a.target = "_blank";
    a.rel = "noopener noreferrer nofollow";
    for (var i = 0; i < children.length; i++) a.appendChild(children[i]);
    return a;
  }

  // ---------------------------------------------------------------- inline

  var ESCAPABLE = "\\`*_{}[]()#+-.!|~<>\"'";
  var BARE_URL = /^(https?:\/\/[^\s<>]+|mailto:[^\s<>]+@[^\s<>]+)/i;

  function isSpace(ch) {
    return ch === undefined || ch === "" || /\s/.test(ch);
  }

  function isPunct(ch) {
    return ch !== undefined && /[!-\/:-@\[-`{-~\u2000-\u206F\u2E00-\u2E7F]/.test(ch);
  }

  /** CommonMark's flanking rules, which decide whether a delimiter run may open or close. */
  function leftFlanking(before, after) {
    return !isSpace(after) && (!isPunct(after) || isSpace(before) || isPunct(before));
  }

  function rightFlanking(before, after) {
    return !isSpace(before) && (!isPunct(before) || isSpace(after) || isPunct(after));
  }

  function isWordChar(ch) {
    return ch !== undefined && /[0-9A-Za-z\u00C0-\uFFFF]/.test(ch);
  }

  /** Index of the closing delimiter `delim` for an opener at `from`, or -1. */
  function findClosing(text, delim, from) {
    var i = from;
    while (i < text.length) {
      var ch = text[i];
      if (ch === "\\") {
        i += 2;
        continue;
      }
      if (ch === "`") {
        var run = countRun(text, i, "`");
        var end = text.indexOf(text.substr(i, run), i + run);
        i = end === -1 ? i + run : end + run;
        continue;
      }
      if (text.substr(i, delim.length) === delim && i > from && rightFlanking(text[i - 1], text[i + delim.length])) {
        var after = text[i + delim.length];
        // "**" must not close a "*" opener halfway through a longer run.
        if (delim.length === 1 && after === delim) {
          i += countRun(text, i, delim);
          continue;
        }
        if (delim === "_" && isWordChar(after)) {
          i += 1;
          continue;
        }
        return i;
      }
      i += 1;
    }
    return -1;
  }

  function countRun(text, i, ch) {
    var n = 0;
    while (text[i + n] === ch) n += 1;
    return n;
  }

  /** Matches "[label](url)" starting at i: {label, url, end} or null. */
  function matchLink(text, i) {
    if (text[i] !== "[") return null;
    var depth = 0;
    var j = i;
    for (; j < text.length; j++) {
      if (text[j] === "\\") {
        j += 1;
        continue;
      }
      if (text[j] === "[") depth += 1;
      else if (text[j] === "]") {
        depth -= 1;
        if (depth === 0) break;
      }
    }
    if (j >= text.length || text[j + 1] !== "(") return null;
    var k = j + 2;
    var parens = 1;
    for (; k < text.length; k++) {
      if (text[k] === "\\") {
        k += 1;
        continue;
      }
      if (text[k] === "(") parens += 1;
      else if (text[k] === ")") {
        parens -= 1;
        if (parens === 0) break;
      }
    }
    if (k >= text.length) return null;
    var target = text.slice(j + 2, k).trim();
    // Drop an optional title: [x](url "title").
    var titled = /^(\S+)\s+(".*"|'.*')$/.exec(target);
    if (titled) target = titled[1];
    if (target[0] === "<" && target[target.length - 1] === ">") target = target.slice(1, -1);
    return { label: text.slice(i + 1, j), url: target, end: k + 1 };
  }

  function renderInline(doc, text, depth) {
    var out = [];
    var buffer = "";
    function flush() {
      if (buffer) {
        out.push(doc.createTextNode(buffer));
        buffer = "";
      }
    }
    function wrap(tag, inner) {
      flush();
      var node = el(doc, tag);
      var children = renderInline(doc, inner, depth + 1);
      for (var c = 0; c < children.length; c++) node.appendChild(children[c]);
      out.push(node);
    }
    if (depth > MAX_DEPTH) return [doc.createTextNode(text)];

    var i = 0;
    while (i < text.length) {
      var ch = text[i];
      if (ch === "\\" && i + 1 < text.length && ESCAPABLE.indexOf(text[i + 1]) !== -1) {
        buffer += text[i + 1];
        i += 2;
        continue;
      }
      if (ch === "\\" && text[i + 1] === "\n") {
        flush();
        out.push(el(doc, "br"));
        i += 2;
        continue;
      }
      if (ch === "\n") {
        flush();
        out.push(el(doc, "br"));
        i += 1;
        continue;
      }
      if (ch === "`") {
        var run = countRun(text, i, "`");
        var fence = text.substr(i, run);
        var close = text.indexOf(fence, i + run);
        while (close !== -1 && text[close + run] === "`") close = text.indexOf(fence, close + run + 1);
        if (close !== -1) {
          flush();
          var code = el(doc, "code");
          var content = text.slice(i + run, close).replace(/\n/g, " ");
          if (/^ .* $/.test(content) && content.trim()) content = content.slice(1, -1);
          code.textContent = content;
          out.push(code);
          i = close + run;
          continue;
        }
        buffer += fence;
        i += run;
        continue;
      }
      if (ch === "!" && text[i + 1] === "[") {
        var image = matchLink(text, i + 1);
        if (image) {
          flush();
          var imageUrl = safeUrl(image.url);
          var alt = image.label || "image";
          if (imageUrl) out.push(link(doc, imageUrl, [doc.createTextNode(alt)]));
          else out.push(doc.createTextNode(alt));
          i = image.end;
          continue;
        }
      }
      if (ch === "[") {
        var found = matchLink(text, i);
        if (found) {
          flush();
          var children = renderInline(doc, found.label, depth + 1);
          var href = safeUrl(found.url);
          if (href) out.push(link(doc, href, children));
          else for (var n = 0; n < children.length; n++) out.push(children[n]);
          i = found.end;
          continue;
        }
      }
      if (ch === "<") {
        var auto = /^<((?:https?:\/\/|mailto:)[^\s<>]+)>/i.exec(text.slice(i));
        if (auto && safeUrl(auto[1])) {
          flush();
          out.push(link(doc, safeUrl(auto[1]), [doc.createTextNode(auto[1])]));
          i += auto[0].length;
          continue;
        }
      }
      if ((ch === "h" || ch === "H" || ch === "m" || ch === "M") && !isWordChar(text[i - 1])) {
        var bare = BARE_URL.exec(text.slice(i));
        if (bare) {
          var urlText = bare[1].replace(/[.,;:!?'")\]]+$/, "");
          // Keep a closing parenthesis that belongs to the URL: https://en.wikipedia.org/wiki/X_(Y)
          var opens = (urlText.match(/\(/g) || []).length;
          var closes = (urlText.match(/\)/g) || []).length;
          var rest = bare[1].slice(urlText.length);
          while (opens > closes && rest[0] === ")") {
            urlText += ")";
            rest = rest.slice(1);
            closes += 1;
          }
          var bareHref = safeUrl(urlText);
          if (bareHref) {
            flush();
            out.push(link(doc, bareHref, [doc.createTextNode(urlText)]));
            i += urlText.length;
            continue;
          }
        }
      }
      if (ch === "~" && text[i + 1] === "~" && leftFlanking(text[i - 1], text[i + 2])) {
        var strikeEnd = findClosing(text, "~~", i + 2);
        if (strikeEnd !== -1) {
          wrap("del", text.slice(i + 2, strikeEnd));
          i = strikeEnd + 2;
          continue;
        }
      }
      if (ch === "*" || ch === "_") {
        var count = countRun(text, i, ch);
        var opens = leftFlanking(text[i - 1], text[i + count]);
        var intraword = ch === "_" && isWordChar(text[i - 1]);
        if (opens && !intraword) {
          if (count >= 3) {
            var tripleEnd = findClosing(text, ch + ch + ch, i + 3);
            if (tripleEnd !== -1) {
              flush();
              var strong = el(doc, "strong");
              var em = el(doc, "em");
              var parts = renderInline(doc, text.slice(i + 3, tripleEnd), depth + 1);
              for (var p = 0; p < parts.length; p++) em.appendChild(parts[p]);
              strong.appendChild(em);
              out.push(strong);
              i = tripleEnd + 3;
              continue;
            }
          }
          if (count >= 2) {
            var boldEnd = findClosing(text, ch + ch, i + 2);
            if (boldEnd !== -1) {
              wrap("strong", text.slice(i + 2, boldEnd));
              i = boldEnd + 2;
              continue;
            }
          }
          var italicEnd = findClosing(text, ch, i + 1);
          if (italicEnd !== -1) {
            wrap("em", text.slice(i + 1, italicEnd));
            i = italicEnd + 1;
            continue;
          }
        }
        buffer += text.substr(i, count);
        i += count;
        continue;
      }
      buffer += ch;
      i += 1;
    }
    flush();
    return out;
  }

  // ---------------------------------------------------------------- blocks

  var FENCE = /^ {0,3}(`{3,}|~{3,})\s*([^`\s]*)[^`]*$/;
  var HEADING = /^ {0,3}(#{1,6})(?:\s+(.*?))?(?:\s+#+)?\s*$/;
  var RULE = /^ {0,3}([-*_])(?:\s*\1){2,}\s*$/;
  var QUOTE = /^ {0,3}> ?(.*)$/;
  var LIST_ITEM = /^( {0,12})([-*+]|\d{1,9}[.)])(\s+|$)(.*)$/;
  var TABLE_SEPARATOR = /^\s*\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?\s*$/;

  function isBlank(line) {
    return /^\s*$/.test(line);
  }

  function splitRow(line) {
    var trimmed = line.trim();
    if (trimmed[0] === "|") trimmed = trimmed.slice(1);
    if (trimmed[trimmed.length - 1] === "|" && trimmed[trimmed.length - 2] !== "\\") trimmed = trimmed.slice(0, -1);
    var cells = [];
    var current = "";
    for (var i = 0; i < trimmed.length; i++) {
      if (trimmed[i] === "\\" && trimmed[i + 1] === "|") {
        current += "|";
        i += 1;
      } else if (trimmed[i] === "|") {
        cells.push(current.trim());
        current = "";
      } else current += trimmed[i];
    }
    cells.push(current.trim());
    return cells;
  }

  function startsBlock(line, next) {
    return (
      FENCE.test(line) ||
      HEADING.test(line) ||
      RULE.test(line) ||
      QUOTE.test(line) ||
      LIST_ITEM.test(line) ||
      (line.indexOf("|") !== -1 && next !== undefined && TABLE_SEPARATOR.test(next) && next.indexOf("-") !== -1)
    );
  }

  function renderBlocks(doc, lines, parent, depth) {
    if (depth > MAX_DEPTH) {
      var p0 = el(doc, "p");
      p0.textContent = lines.join("\n");
      parent.appendChild(p0);
      return;
    }
    var i = 0;
    while (i < lines.length) {
      var line = lines[i];
      if (isBlank(line)) {
        i += 1;
        continue;
      }

      var fence = FENCE.exec(line);
      if (fence) {
        var marker = fence[1];
        var body = [];
        i += 1;
        while (i < lines.length) {
          var closing = lines[i].trim();
          if (closing.length >= marker.length && closing === new Array(closing.length + 1).join(marker[0])) break;
          body.push(lines[i]);
          i += 1;
        }
        i += 1; // the closing fence (or past the end while streaming)
        var pre = el(doc, "pre");
        var code = el(doc, "code");
        if (fence[2]) {
          code.setAttribute("data-lang", fence[2]);
          pre.setAttribute("data-lang", fence[2]);
        }
        code.textContent = body.join("\n");
        pre.appendChild(code);
        parent.appendChild(pre);
        continue;
      }

      var heading = HEADING.exec(line);
      if (heading) {
        var h = el(doc, "h" + heading[1].length); // chat.css keeps them chat-sized
        appendAll(h, renderInline(doc, heading[2] || "", depth));
        parent.appendChild(h);
        i += 1;
        continue;
      }

      if (RULE.test(line)) {
        parent.appendChild(el(doc, "hr"));
        i += 1;
        continue;
      }

      if (QUOTE.test(line)) {
        var quoted = [];
        while (i < lines.length && !isBlank(lines[i])) {
          var q = QUOTE.exec(lines[i]);
          if (q) quoted.push(q[1]);
          else if (quoted.length && !startsBlock(lines[i], lines[i + 1])) quoted.push(lines[i]);
          else break;
          i += 1;
        }
        var blockquote = el(doc, "blockquote");
        renderBlocks(doc, quoted, blockquote, depth + 1);
        parent.appendChild(blockquote);
        continue;
      }

      if (LIST_ITEM.test(line)) {
        i = renderList(doc, lines, i, parent, depth);
        continue;
      }

      var next = lines[i + 1];
      if (line.indexOf("|") !== -1 && next !== undefined && TABLE_SEPARATOR.test(next) && next.indexOf("-") !== -1) {
        i = renderTable(doc, lines, i, parent, depth);
        continue;
      }

      var paragraph = [line.replace(/^\s+/, "")];
      i += 1;
      while (i < lines.length && !isBlank(lines[i]) && !startsBlock(lines[i], lines[i + 1])) {
        paragraph.push(lines[i].replace(/^\s+/, ""));
        i += 1;
      }
      var p = el(doc, "p");
      appendAll(p, renderInline(doc, paragraph.join("\n").replace(/\s+$/, ""), depth));
      parent.appendChild(p);
    }
  }

  function renderList(doc, lines, start, parent, depth) {
    var first = LIST_ITEM.exec(lines[start]);
    var baseIndent = first[1].length;
    var ordered = /\d/.test(first[2]);
    var list = el(doc, ordered ? "ol" : "ul");
    if (ordered) {
      var startNumber = parseInt(first[2], 10);
      if (startNumber !== 1) list.setAttribute("start", String(startNumber));
    }
    var i = start;
    var items = [];
    var loose = false;
    while (i < lines.length) {
      var line = lines[i];
      var item = LIST_ITEM.exec(line);
      if (item && item[1].length <= baseIndent + 1 && /\d/.test(item[2]) === ordered) {
        var contentIndent = item[1].length + item[2].length + Math.max(1, Math.min(item[3].length, 4));
        items.push({ lines: [item[4]], indent: contentIndent });
        i += 1;
        continue;
      }
      if (item && item[1].length <= baseIndent + 1) break; // a list of the other kind starts
      if (isBlank(line)) {
        // A blank line continues the list only when an indented line or another item follows.
        var j = i + 1;
        while (j < lines.length && isBlank(lines[j])) j += 1;
        if (j >= lines.length) break;
        var after = LIST_ITEM.exec(lines[j]);
        var indent = /^ */.exec(lines[j])[0].length;
        if ((after && after[1].length <= baseIndent + 1 && /\d/.test(after[2]) === ordered) || indent > baseIndent + 1) {
          if (after && after[1].length <= baseIndent + 1) loose = true; // blank line between items
          items[items.length - 1].lines.push("");
          i += 1;
          continue;
        }
        break;
      }
      var lineIndent = /^ */.exec(line)[0].length;
      var current = items[items.length - 1];
      if (lineIndent > baseIndent) {
        current.lines.push(line.slice(Math.min(lineIndent, current.indent)));
      } else if (!startsBlock(line, lines[i + 1])) {
        current.lines.push(line.trim()); // lazy continuation of the item's paragraph
      } else break;
      i += 1;
    }
    for (var k = 0; k < items.length; k++) {
      var li = el(doc, "li");
      var itemLines = items[k].lines;
      while (itemLines.length && isBlank(itemLines[itemLines.length - 1])) itemLines.pop();
      var task = /^\[([ xX])\]\s+/.exec(itemLines[0] || "");
      if (task) {
        var box = el(doc, "input");
        box.type = "checkbox";
        box.disabled = true;
        box.checked = task[1] !== " ";
        li.appendChild(box);
        li.className = "cg-task-item";
        itemLines[0] = itemLines[0].slice(task[0].length);
      }
      renderBlocks(doc, itemLines, li, depth + 1);
      // A tight list item shows its text inline, not as a paragraph with margins.
      if (!loose && li.firstElementChild && li.firstElementChild.tagName === "P") {
        var firstP = li.querySelector(":scope > p");
        while (firstP.firstChild) li.insertBefore(firstP.firstChild, firstP);
        li.removeChild(firstP);
      }
      list.appendChild(li);
    }
    parent.appendChild(list);
    return i;
  }

  function renderTable(doc, lines, start, parent, depth) {
    var header = splitRow(lines[start]);
    var aligns = splitRow(lines[start + 1]).map(function (spec) {
      var left = spec[0] === ":";
      var right = spec[spec.length - 1] === ":";
      return left && right ? "center" : right ? "right" : left ? "left" : "";
    });
    var wrapper = el(doc, "div", "cg-table-wrap");
    var table = el(doc, "table");
    var thead = el(doc, "thead");
    var headRow = el(doc, "tr");
    for (var h = 0; h < header.length; h++) {
      var th = el(doc, "th");
      if (aligns[h]) th.style.textAlign = aligns[h];
      appendAll(th, renderInline(doc, header[h], depth));
      headRow.appendChild(th);
    }
    thead.appendChild(headRow);
    table.appendChild(thead);
    var tbody = el(doc, "tbody");
    var i = start + 2;
    while (i < lines.length && !isBlank(lines[i]) && lines[i].indexOf("|") !== -1) {
      var cells = splitRow(lines[i]);
      var row = el(doc, "tr");
      for (var c = 0; c < header.length; c++) {
        var td = el(doc, "td");
        if (aligns[c]) td.style.textAlign = aligns[c];
        appendAll(td, renderInline(doc, cells[c] || "", depth));
        row.appendChild(td);
      }
      tbody.appendChild(row);
      i += 1;
    }
    table.appendChild(tbody);
    wrapper.appendChild(table);
    parent.appendChild(wrapper);
    return i;
  }

  function appendAll(parent, nodes) {
    for (var i = 0; i < nodes.length; i++) parent.appendChild(nodes[i]);
  }

  /** Renders Markdown `text` into a new DocumentFragment of safe DOM nodes. */
  function render(text, doc) {
    doc = doc || global.document;
    var fragment = doc.createDocumentFragment();
    var source = String(text == null ? "" : text)
      .replace(/\r\n?/g, "\n")
      .replace(/\t/g, "    ")
      .replace(/\u0000/g, "\uFFFD");
    renderBlocks(doc, source.split("\n"), fragment, 0);
    return fragment;
  }

  var ChatGate = (global.ChatGate = global.ChatGate || {});
  ChatGate.markdown = { render: render, safeUrl: safeUrl };
})(window);
