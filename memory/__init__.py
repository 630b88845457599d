"""A twin's memory of earlier conversations: what comes before a conversation as context.

    history: the end of the same chat's conversations just before it;
    recall: the earlier conversations of the chat most like it (BM25 over their text);
each after a line that says how long before it was (memory.context), from the conversations a run keeps in
its folder (memory.store). Context only: never trained, and at training time only strictly older
conversations count. By default a twin recalls only the chat it talks in: what the owner said to one
person never comes up with another.

Nothing is imported here, so that the settings (memory.settings) load without torch for a program's
--help. Imports: core, data and model below it; training, fidelity, chat and serving above it.
"""
