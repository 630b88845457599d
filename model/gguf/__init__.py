"""GGUF, llama.cpp's format: file.py reads a GGUF file's header and tensors, every range checked; read.py
loads a GGUF file's model, write.py writes one (with vocab.py's tokenizer metadata and templates.py's chat
templates), and `python export.py` is the program that exports a twin."""

from model.gguf.layout import gguf_tensor_names
from model.gguf.read import load_gguf_model

__all__ = ["gguf_tensor_names", "load_gguf_model"]
