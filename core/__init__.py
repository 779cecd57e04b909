"""The suite's shared core: errors, files (prompts, corpora, JSON, atomic outputs), typed option parsing, model
loading and the token-id layout that sampling, training and scoring share.

Imports run one way: `workflow` → `methods` → `evaluation` → `core`. Nothing here imports from the three above it,
so the judge (`evaluation`) never imports the contestants (`methods`).
"""
