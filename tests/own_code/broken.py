"""A file that fails when imported, as a user's file with a typo does."""

import torch_does_not_exist  # noqa: F401
