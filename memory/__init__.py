"""The user's local vector memory: facts, preferences, episodes and pack knowledge.

``memory.store`` owns chromadb and ``memory.embedder`` owns sentence-transformers; nothing else
in the project imports either.
"""
