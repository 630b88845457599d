"""The model (Mistral, Llama, Qwen2, Qwen3, Gemma 3), its checkpoint I/O (Hugging Face and GGUF) and its tokenizer.

Nothing is imported here: a program's --help, which needs only the settings (model.lora_config), answers
without loading torch. Import from the modules: model.checkpoint, model.transformer, model.tokenizer.
"""

DEFAULT_MODEL = "cognitivecomputations/dolphin-2.2.1-mistral-7b"  # the base of every program without a --model
