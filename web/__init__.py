"""The web player (issue #14): search, playback with the SIP ladder, roles and the audit trail."""
