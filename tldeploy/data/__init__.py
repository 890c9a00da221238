"""Data on disk: labelled folders, file scanning and loading, the built-in digits."""
