"""Privacy-by-design video-protection appliance.

Raw pixels live only in the pixel process's RAM; what leaves the box is a sealed clip,
and only when a legal profile permits the behaviour that triggered it.
"""

import os as _os

# onnxruntime >= 1.29 writes a persistent device id and an SQLite database under
# ~/.cache/Microsoft/DeveloperTools as soon as it is loaded (seen with strace in
# tests/test_privacy_trace.py). Nothing may write to disk unasked, so telemetry is switched off
# here, before any submodule imports onnxruntime. ORT_TELEMETRY_DISABLED does not stop it in
# 1.31.1; ORT_DISABLE_TELEMETRY=1 does.
_os.environ["ORT_DISABLE_TELEMETRY"] = "1"

__version__ = "0.1.0"
