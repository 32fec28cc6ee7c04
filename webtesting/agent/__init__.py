"""The agent: runs beside one bot deployment and relays it to the web server."""
