"""Sample step: a stand-in for a project's unit tests, run by its own virtualenv."""

import argparse
import os
import sys

parser = argparse.ArgumentParser()
parser.add_argument("--fast", action="store_true")
args = parser.parse_args()
print(f"process1: python {sys.version.split()[0]} from {sys.prefix}")
print(f"process1: APP_ENV={os.environ.get('APP_ENV')} fast={args.fast}")
in_venv = sys.prefix != sys.base_prefix
print(f"process1: 3 checks passed (in a virtualenv: {in_venv})")
sys.exit(0 if in_venv else 1)
