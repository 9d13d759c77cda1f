"""The openai engine (``openai_backend.OpenAIBackend``); the client and wire types it uses are in stmed.api."""
