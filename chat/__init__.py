"""A conversation with a twin: loading it from a run folder or a model, the people it knows, the chat itself."""
