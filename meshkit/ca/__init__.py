"""The meshkit certificate authority: signing core, HTTP API, client and join tokens."""
