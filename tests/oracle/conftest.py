import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # make_trl_golden, a script, importable by the live test
