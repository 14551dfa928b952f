"""The node's HTTP server: WebSocket (RFC 7395), BOSH (XEP-0206), host-meta (XEP-0156),
HTTP File Upload (XEP-0363), metrics and health checks; on h11 and wsproto."""
