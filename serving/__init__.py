"""Serving a twin over HTTP the way OpenAI's chat API is served: the routes and their JSON (api), the model
worker that answers one request at a time (engine), and a reply's text as a client sees it (reply)."""
