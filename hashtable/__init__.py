"""The hash table service: requests, engine (table, sessions, storage), wire protocol, server, client."""
