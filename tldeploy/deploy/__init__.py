"""The last mile: a bundle to take to the device, and its verification there."""
