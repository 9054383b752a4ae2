"""Identity: passwords, tokens, sessions, API keys, principals, rate limits."""
