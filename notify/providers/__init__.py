"""Providers: each delivers one channel's messages through one service (SMTP, Twilio, FCM, files)."""
