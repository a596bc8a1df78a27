# The two commands of the README. Each installs what it needs first (scripts/setup.sh).
.PHONY: demo test setup

setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/caliopen demo

test: setup
	.venv/bin/python -m pytest -q -p no:cacheprovider
