"""The reference bot: a small, deterministic WxService (see docs/wxservice-protocol.md)."""
