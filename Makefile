# p3d_perception: the two commands a user needs are `make demo` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help
ENV := source install/setup.bash
PYTEST_ARGS ?=

.PHONY: help setup demo test lint bench clean train-deps

help:
	@echo "make setup   install everything into this checkout (.venv, install/)"
	@echo "make demo    setup, then run the demo on the bundled model and a synthetic bag"
	@echo "make test    setup, then run the test suite (pytest + ament lint checks)"
	@echo "make lint    flake8 / pep257 / copyright checks only"
	@echo "make train-deps  setup, then the training-only mesh assets (requirements-train.txt)"
	@echo "make clean   remove build products (keeps .venv)"

# ROS 2 wheel set for a machine without ROS: jazzy (default, LTS) or kilted
P3D_ROS_DISTRO ?= jazzy

setup:
	@P3D_ROS_DISTRO=$(P3D_ROS_DISTRO) bash scripts/setup.sh

demo: setup
	@$(ENV) && p3d demo

# The upstream ros2 CLI and launch system are not on PyPI; ../shared/ros2_tools holds
# their sources. Tests that need them skip, with the reason, where it is absent.
ROS2_TOOLS ?= ../shared/ros2_tools

test: setup
	@if [ -f $(ROS2_TOOLS)/install.sh ]; then bash $(ROS2_TOOLS)/install.sh .; \
	 else echo "[test] $(ROS2_TOOLS) not found: ros2 CLI / launch tests will be skipped"; fi
	@$(ENV) && python -m pytest test $(PYTEST_ARGS)

# Training-time only (mesh assets for data.mesh_share > 0); the node never needs them.
train-deps: setup
	@$(ENV) && python -m pip install -q -r requirements-train.txt

lint: setup
	@$(ENV) && python -m pytest test/test_lint.py -q

clean:
	rm -rf build install .pytest_cache
	find . -name __pycache__ -not -path './.venv/*' -prune -exec rm -rf {} +
