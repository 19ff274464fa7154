"""The rules of Veil, free of Discord and HTTP: who may see what, and where it may go."""
