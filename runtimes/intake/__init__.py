"""What workers and launchers report themselves (websocket activity, and later the API)."""
