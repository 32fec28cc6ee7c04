"""The web server: pages, registry HTTP API, browser sessions, agent links."""
