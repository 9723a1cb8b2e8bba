# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
