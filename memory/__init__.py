"""The user's local vector memory: facts, preferences, episodes and pack knowledge.

``memory.chroma`` owns chromadb and ``memory.embedder`` owns sentence-transformers; nothing else
in the project imports either. ``memory.store`` is the per-user facade, ``memory.knowledge`` a
pack's notes (the caller gives the files), ``memory.recall`` the ranking, ``memory.types`` the
``Memory`` row every module hands out. Nothing here imports the prompt, the packs or the core:
the core maps ``Memory`` rows to prompt objects (``assistant.answering.recalled_for``).
"""
