# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""The one exception for unusable models, shared by model/, recognize and runtime.

Lives in its own module so low-level loaders can raise it without importing the
recogniser; ``p3d_perception.recognize.ModelError`` is the same class.
"""


class ModelError(RuntimeError):
    """Model missing, corrupt or mismatched; the message says what to do about it."""
