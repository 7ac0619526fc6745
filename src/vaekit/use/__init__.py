"""Use a trained model: encode, decode, score and export the model of a run folder."""
