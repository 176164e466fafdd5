"""Where predicted probabilities come from: a file or column the user has, the cross-validated
TF-IDF baseline, a transformers model, or a transformers encoder's embeddings."""
