"""The SMS network: your own phone (SMSGate), Twilio, or a GSM modem through gammu-smsd."""
