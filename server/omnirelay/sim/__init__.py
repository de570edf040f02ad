"""The provider simulator: a real HTTP server speaking OpenAI, Anthropic, Gemini and Ollama wire formats."""
