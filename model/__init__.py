"""The model (Mistral, Llama, Qwen2, Qwen3), its checkpoint I/O (Hugging Face and GGUF) and its tokenizer."""

from model.checkpoint import CheckpointError, load_model, load_tokenizer, save_model
from model.tokenizer import Tokenizer
from model.transformer import KVCache, ModelConfig, Transformer

DEFAULT_MODEL = "cognitivecomputations/dolphin-2.2.1-mistral-7b"  # the base of every program without a --model

__all__ = [
    "CheckpointError",
    "DEFAULT_MODEL",
    "KVCache",
    "ModelConfig",
    "Transformer",
    "Tokenizer",
    "load_model",
    "load_tokenizer",
    "save_model",
]
