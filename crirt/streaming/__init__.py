"""CRI streaming: the HTTP server behind Exec, Attach and PortForward, and its SPDY/3.1 and WebSocket transports."""
