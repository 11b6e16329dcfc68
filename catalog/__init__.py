"""The catalog: a cctools-compatible name server (server, client API, command-line browser)."""
