"""How the items of a streamed reply combine into its text: deltas or cumulative snapshots.

Model libraries stream in one of two ways. Most yield *deltas* (each item is new text: ``"You"``,
``" said"``); some (BAML partials, several agent frameworks) yield *cumulative snapshots* (each
item is the whole text so far: ``"You"``, ``"You said"``). ``session.stream()``,
``session.stream_reply_from()`` and ``ReplyStream.write()`` take either, and ``StreamText``
tells them apart once per stream:

* Empty items are ignored and do not count.
* The first two *different* non-empty items decide. If the second strictly extends the first
  (starts with it and is longer), the stream is **cumulative**; otherwise it is **deltas**. The
  stream keeps that mode to its end.
* An item equal to the first one, before the mode is decided, is ambiguous: a snapshot stream
  repeats its text when nothing new arrived (``"You", "You", "You said"``), and a delta stream
  repeats tokens (``"ha", "ha", "!"``). Until the next different item decides, the text reads
  the repeats as deltas (so a stream of one repeated token is shown as it comes, and a stream
  that ends on repeats was deltas: ``"ha", "ha"`` is ``"haha"``); if the next different item
  strictly extends the first, the stream was cumulative and that item replaces the text.
* After such repeats, a cumulative reading is provisional until the next different item: if it
  extends the text again, the stream is cumulative; if not, it was deltas from the start
  (``"ha", "ha", "hah", "a"`` is ``"hahahaha"``, the case capsule-api.md shows Capsule losing).
* In cumulative mode an item that extends the text so far adds its new suffix, an equal item
  adds nothing, and any other item replaces the whole text (a model that revised its output),
  as ``ReplyStream.replace()`` does.
* In delta mode every item is appended, even one that happens to repeat or extend the text so
  far (Capsule drops those: it takes any item equal to or extending the text as a snapshot).

Whitespace is text like any other: ``" "`` is a real delta, and ``"Hi "`` -> ``"Hi"`` in a
cumulative stream is a replacement. The one stream the rule cannot read is a delta stream whose
first different token extends the first one (``"a", "ab"``: read as snapshots, giving ``"ab"``);
model tokenizers do not produce that, and ``replace()`` is there for code that knows its mode.
"""

from __future__ import annotations

from typing import Literal

StreamMode = Literal["undecided", "deltas", "cumulative"]


class StreamText:
    """The text of one stream so far; ``add`` each item, ``finish`` at the end. ``text`` is
    always what the stream would be if it ended now."""

    def __init__(self) -> None:
        self.text = ""
        self.mode: StreamMode = "undecided"
        self._first: str | None = None
        self._held = 0
        """Copies of the first item seen again before the mode was decided (in ``text`` as deltas)."""
        self._as_deltas: str | None = None
        """While a cumulative reading made after held repeats is provisional: the text as deltas,
        without the item that decided (that item is ``text``)."""

    def add(self, item: str) -> bool:
        """Take one streamed item; True when ``text`` changed."""
        if not item:
            return False
        if self.mode == "deltas":
            self.text += item
            return True
        if self.mode == "cumulative":
            if item == self.text:
                return False
            if self._as_deltas is not None:
                if not item.startswith(self.text):  # the provisional reading was wrong: deltas
                    self.mode = "deltas"
                    self.text = self._as_deltas + self.text + item
                    self._as_deltas = None
                    return True
                self._as_deltas = None  # extended again: cumulative for good
            self.text = item  # an extension (the new suffix) or a replacement: the whole text either way
            return True
        if self._first is None:
            self._first = item
            self.text = item
            return True
        if item == self._first:
            self._held += 1
            self.text = self._first * (1 + self._held)  # deltas, until a different item says otherwise
            return True
        if item.startswith(self._first):
            self.mode = "cumulative"
            self.text = item
            if self._held:
                self._as_deltas = self._first * (1 + self._held)
        else:
            self.mode = "deltas"
            self.text = self._first * (1 + self._held) + item
        self._held = 0
        return True

    def replace(self, text: str) -> None:
        """Set the whole text (``ReplyStream.replace``); an undecided stream starts over from it."""
        self.text = text
        self._as_deltas = None
        if self.mode == "undecided":
            self._first = text or None
            self._held = 0

    def finish(self) -> None:
        """The stream ended: an undecided stream with repeats was deltas (``text`` already reads
        them so)."""
        if self.mode == "undecided" and self._held:
            self.mode = "deltas"
            self._held = 0
