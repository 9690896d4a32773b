"""Exporting a trained model to other formats (GGUF for llama.cpp and Ollama)."""
