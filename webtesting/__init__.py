"""WebTesting: chat with deployed bots and watch their per-user state live."""
