"""capture: real-time facial performance capture and retargeting on DECA/FLAME."""
import os as _os

# The per-frame numpy work (the landmark fit) is many small matrix products: OpenBLAS's thread pool makes
# them ~5x slower and fights the pipeline's stage threads for the cores. Set before numpy loads; a value
# the user exported wins.
_os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
