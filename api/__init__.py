"""The HTTP API, served beside the web page: OpenAI-compatible `/v1` and VisualGLM's `POST /`."""
