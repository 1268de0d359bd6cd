"""Everything that runs on the operator's side: transport, fleet model, TUI and commands."""

import warnings

from cryptography.utils import CryptographyDeprecationWarning

__version__ = "0.1.0"

# cryptography 51 deprecates DSA, and asyncssh reads the deprecated names from cryptography's
# ``dsa`` module at import (five type aliases) and again whenever it meets a DSA key: each read
# would print a CryptographyDeprecationWarning on the operator's terminal (and tear the screen).
# Installed here, the one module every console entry point and every importer of asyncssh (the
# transport, the demo) loads first, and only for warnings attributed to asyncssh's own modules:
# ours, and cryptography's raised anywhere else, still show.
warnings.filterwarnings(
    "ignore", category=CryptographyDeprecationWarning, module=r"asyncssh(\..*)?\Z"
)
