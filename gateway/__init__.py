"""chatgate: one async handler for a web chat widget, Telegram and Slack."""
