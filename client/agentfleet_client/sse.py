"""An incremental parser of `text/event-stream` (the HTML Living Standard's server-sent events).

Bytes go in as they arrive, in chunks of any size; whole events come out. Lines end with CRLF,
LF or CR (a CRLF split across two chunks counts once); a line starting with `:` is a comment (a
keep-alive); `field: value` lines build the event, a blank line ends it. `id:` sets the last event
id, which every later event carries until another `id:` changes it (what `Last-Event-ID` resumes
from). One difference from a browser: an event with an `event:` line but no `data:` line is
still delivered (with data ""), so an `end` event without data is not lost.
"""

from __future__ import annotations

import codecs
import re

from agentfleet_client.models import Event

_LINE_END = re.compile("\r\n|\r|\n")


class SSEParser:
    """Turns the bytes of an event stream into `Event`s; `last_event_id` and `retry_ms` as sent."""

    def __init__(self, last_event_id: str | None = None) -> None:
        self.last_event_id = last_event_id
        self.retry_ms: int | None = None
        self._decoder = codecs.getincrementaldecoder("utf-8-sig")(errors="replace")  # drops one BOM
        self._partial = ""  # the start of a line whose end has not arrived
        self._after_cr = False  # the last chunk ended with CR: a LF first in the next one is its pair
        self._type = ""
        self._data: list[str] = []
        self._has_fields = False

    def feed(self, chunk: bytes) -> list[Event]:
        """The events that `chunk` completes, in order."""
        text = self._decoder.decode(chunk)
        if self._after_cr and text:
            text = text[1:] if text.startswith("\n") else text
            self._after_cr = False
        if text:
            self._after_cr = text.endswith("\r")
        *lines, self._partial = _LINE_END.split(self._partial + text)
        events = []
        for line in lines:
            event = self.feed_line(line)
            if event is not None:
                events.append(event)
        return events

    def feed_line(self, line: str) -> Event | None:
        """One line without its line end; the event when the line is the blank one that ends it."""
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._type, self._has_fields = value, True
        elif name == "data":
            self._data.append(value)
            self._has_fields = True
        elif name == "id":
            if "\0" not in value:
                self.last_event_id = value or None
        elif name == "retry" and value.isascii() and value.isdigit():
            self.retry_ms = int(value)
        return None  # any other field is ignored, as the standard says

    def _dispatch(self) -> Event | None:
        event = None
        if self._has_fields:
            event = Event.from_sse(self.last_event_id, self._type or "message", "\n".join(self._data))
        self._type, self._data, self._has_fields = "", [], False
        return event
