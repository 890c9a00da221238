"""Input kinds (image, audio): preprocessing contracts, front ends, loading and augmentation."""
