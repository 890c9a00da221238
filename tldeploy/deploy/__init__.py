"""The last mile: a bundle to take to the device, and its verification there.

Importing this package stays light (the CLI's choices come from it)."""

BUILD_PRECISIONS = ("fp32", "fp16")  # what `verify --build` makes on the device
