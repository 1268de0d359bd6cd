"""What a Textual app told the operator, seen the public way: ``App.run_test`` hands every
message to its ``message_hook``, ``App.notify`` among them (a ``Notify``)."""

from __future__ import annotations

from textual.message import Message
from textual.notifications import Notify


class Notices:
    """A ``message_hook`` for ``App.run_test``: the text of each ``App.notify``, in order."""

    def __init__(self) -> None:
        self.said: list[str] = []

    def __call__(self, message: Message) -> None:
        if isinstance(message, Notify):
            self.said.append(str(message.notification.message))

    def any(self, words: str) -> bool:
        """Whether some notification so far holds ``words``."""
        return any(words in text for text in self.said)
