"""The HTTP server (``simdex serve``), its web console, and the HTTP client."""
