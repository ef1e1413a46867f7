"""Serving: the OpenAI-compatible FastAPI app and the Gradio demo."""
