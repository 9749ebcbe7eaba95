"""Training: labelled data in, a fine-tuned and calibrated classifier folder out."""
