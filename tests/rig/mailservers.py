"""The mail servers of the tests are the demo's sandbox: see :mod:`bridges.sandbox.mailservers`."""

from bridges.sandbox.mailservers import MailServerError, MailServers, Sink, SinkMessage, free_port, simple_message

__all__ = ["MailServerError", "MailServers", "Sink", "SinkMessage", "free_port", "simple_message"]
