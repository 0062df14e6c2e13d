"""The training program: ``python -m train --config=train/configs/default.py --workdir=DIR``."""
