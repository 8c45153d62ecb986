import os
import subprocess
import sys

import pytest

from phy_core.plugins import AUTOLOAD_ENV


@pytest.fixture
def run_phy(phy_user_dir):
    """Run the installed ``phy`` console script in a subprocess; returns CompletedProcess."""

    def run(*args, env=None, check=True):
        full_env = {k: v for k, v in os.environ.items() if k != AUTOLOAD_ENV}
        full_env["PHY_USER_DIR"] = str(phy_user_dir)
        full_env.update(env or {})
        script = os.path.join(os.path.dirname(sys.executable), "phy")
        result = subprocess.run([script, *args], capture_output=True, text=True, env=full_env,
                                timeout=300)
        if check and result.returncode != 0:
            raise AssertionError(f"phy {' '.join(args)} exited {result.returncode}:\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result

    return run
