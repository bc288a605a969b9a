# Run by every IPython kernel started with IPYTHONDIR=tools/ipython (make test, the notebook tests):
# with AE_QUICK=1 the notebook runs in quick mode (tools/quick_mode.py). Nothing here runs for a reader.
import os as _os
import sys as _sys

if _os.environ.get("AE_QUICK", "") not in ("", "0"):
    _sys.path.insert(0, _os.path.dirname(_os.path.abspath(_os.environ["IPYTHONDIR"])))
    import quick_mode as _quick_mode

    _quick_mode.activate()
