"""The email network: any IMAP/SMTP mailbox, bridged into encrypted Matrix rooms.

Protocol code: :mod:`.imap` (imapclient, off the event loop) and :mod:`.smtp` (aiosmtplib).
Bridge glue, with the same file names as every network: :mod:`.connector`, :mod:`.client`,
:mod:`.login`, :mod:`.handle_remote`, :mod:`.handle_matrix`, :mod:`.convert`, :mod:`.ids`,
:mod:`.config`, :mod:`.errors`.
"""
