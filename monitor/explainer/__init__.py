"""ALEX's second half: a local LLM checks the classifier's label and explains it (or corrects it)."""
