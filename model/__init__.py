"""The model (Mistral, Llama, Qwen2, Qwen3), its checkpoint I/O (Hugging Face and GGUF) and its tokenizer."""
from model.checkpoint import CheckpointError, load_model, load_tokenizer, save_model
from model.mistral import KVCache, Mistral, MistralConfig
from model.tokenizer import Tokenizer

__all__ = ["CheckpointError", "KVCache", "Mistral", "MistralConfig", "Tokenizer",
           "load_model", "load_tokenizer", "save_model"]
