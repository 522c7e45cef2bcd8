"""The chat widget: its WebSocket, uploads, page and files, and the small JSON API it calls first."""
