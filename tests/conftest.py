import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(1)  # tests run in parallel processes (pytest -n 2)
warnings.filterwarnings("ignore", message=".*soft tracing.*")
