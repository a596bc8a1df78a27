"""SMS gateway protocols, apart from the bridge glue: one :class:`base.SmsBackend` per gateway."""
