"""The model (Mistral, Llama, Qwen2, Qwen3), its checkpoint I/O (Hugging Face and GGUF) and its tokenizer."""
from model.checkpoint import CheckpointError, load_model, load_tokenizer, save_model
from model.transformer import KVCache, Transformer, ModelConfig
from model.tokenizer import Tokenizer

__all__ = ["CheckpointError", "KVCache", "ModelConfig", "Transformer", "Tokenizer",
           "load_model", "load_tokenizer", "save_model"]
