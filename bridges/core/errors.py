"""Errors that carry their meaning for the user.

::

    CaliopenError                 base; ``user_message`` is what the person sees in the room
    ├── ConfigError               a bad config key (``key`` names it); the bridge refuses to start
    ├── UserInputError            a command or login field that is not valid
    │   └── LoginError            the network refused the login (wrong password, unreachable host)
    ├── NotSupported              the network lacks the capability asked for
    ├── ConversionError           a remote message that cannot be converted (bridged as a notice)
    └── SendError                 the network refused or failed to take a message
                                  (``retryable``: worth trying again later)

Only the outermost handlers (the portal queue, command processor, HTTP handlers) catch
broadly; they log with context and never log message bodies or secrets.
"""

from __future__ import annotations


class CaliopenError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.user_message = message


class ConfigError(CaliopenError):
    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"config key '{key}': {message}")
        self.key = key


class UserInputError(CaliopenError):
    pass


class LoginError(UserInputError):
    pass


class NotSupported(CaliopenError):
    pass


class ConversionError(CaliopenError):
    pass


class SendError(CaliopenError):
    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable
