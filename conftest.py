# lets tests import the top-level scripts (model.py, jepa.py, ...) from any working directory
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
